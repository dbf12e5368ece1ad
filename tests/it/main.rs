//! The integration tests: one binary, a fresh database and Redis key prefix per test,
//! the server served in-process on a free port with a clock the test moves.
mod award;
mod award_faults;
mod helpers;
mod programs;

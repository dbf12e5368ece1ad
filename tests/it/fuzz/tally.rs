//! The tally: what every answer must look like, and the count of status codes per RPC
//! that `--nocapture` prints.
use super::*;

/// Codes a bad (or good) input must never produce with PostgreSQL and Redis up. A handler
/// that panics shows as CANCELLED (the stream is reset), and DEADLINE_EXCEEDED is the
/// fuzzer's own bound on a request that hangs.
pub(super) fn forbidden(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::Internal
            | Code::Unavailable
            | Code::Cancelled
            | Code::DeadlineExceeded
    )
}

/// Status counts per RPC, and of the items of batches.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) per_rpc: BTreeMap<&'static str, BTreeMap<String, u64>>,
    pub(super) batch_items: BTreeMap<String, u64>,
}

/// The column of OK answers that replayed an earlier call (or found the member enrolled,
/// the program's rules unchanged).
pub(super) const REPLAYED: &str = "(of which replayed)";

impl Tally {
    /// Counts an answer and returns what is wrong with it.
    pub(super) fn record(&mut self, call: &Call, answer: &Result<Answer, Status>) -> Vec<String> {
        let mut problems = Vec::new();
        let counts = self.per_rpc.entry(call.rpc()).or_default();
        let code = match answer {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        *counts.entry(format!("{code:?}")).or_default() += 1;
        match answer {
            Err(status) => {
                if forbidden(status.code()) {
                    problems.push(format!("status {:?}", status.code()));
                }
                if status.message().trim().is_empty() {
                    problems.push("an error without a message".into());
                }
            }
            Ok(answer) => {
                *counts.entry(REPLAYED.into()).or_default() += u64::from(answer.replayed);
                *self.batch_items.entry("Ok".into()).or_default() += answer.items_ok as u64;
                *self.batch_items.entry("Ok (replayed)".into()).or_default() +=
                    answer.items_replayed as u64;
                for (index, (raw, message)) in answer.item_errors.iter().enumerate() {
                    let item_code = Code::from_i32(*raw);
                    *self
                        .batch_items
                        .entry(format!("{item_code:?}"))
                        .or_default() += 1;
                    if item_code == Code::Ok || forbidden(item_code) {
                        problems.push(format!("batch item error {index} has code {raw}"));
                    }
                    if message.trim().is_empty() {
                        problems.push(format!("batch item error {index} has no message"));
                    }
                }
            }
        }
        problems
    }

    pub(super) fn print(&self, requests: usize, elapsed: Duration) {
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        for codes in self.per_rpc.values() {
            for (code, count) in codes {
                *totals.entry(code).or_default() += count;
            }
        }
        let mut columns: Vec<&str> = totals.keys().copied().filter(|c| *c != REPLAYED).collect();
        columns.push(REPLAYED);
        let width = columns.iter().map(|c| c.len().max(7)).collect::<Vec<_>>();
        let mut table = format!("{:<14}", "rpc");
        for (column, w) in columns.iter().zip(&width) {
            table.push_str(&format!(" {column:>w$}"));
        }
        let mut row = |name: &str, counts: &dyn Fn(&str) -> u64| {
            table.push_str(&format!("\n{name:<14}"));
            for (column, w) in columns.iter().zip(&width) {
                table.push_str(&format!(" {:>w$}", counts(column)));
            }
        };
        for (rpc, codes) in &self.per_rpc {
            row(rpc, &|c| codes.get(c).copied().unwrap_or(0));
        }
        row("total", &|c| totals.get(c).copied().unwrap_or(0));
        let seconds = elapsed.as_secs_f64();
        println!(
            "fuzz: {requests} requests in {seconds:.1} s ({:.0}/s), status codes:\n{table}\n\
             fuzz: batch items (AwardBatch, EnrollBatch): {:?}",
            requests as f64 / seconds.max(f64::EPSILON),
            self.batch_items
        );
    }
}

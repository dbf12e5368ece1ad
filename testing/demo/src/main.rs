//! `flash-demo` (`make demo`): the walkthrough the product promises. Against the local
//! PostgreSQL it starts its own `flash serve` (its own database, dropped and created again,
//! its own port and contact hash key) and its own private Redis, then walks through an
//! award and its replay, a FIFO spend across two batches, a daily-cap outage, a tier
//! upgrade with its event, a refund and `flash audit`, printing tables as it goes. Each
//! step checks itself: the first one that does not behave as described ends the run with
//! a message and a non-zero exit. The server and Redis are stopped on exit, also on
//! failure.
//!
//! ```text
//! flash-demo [--database flash_demo] [--drop]
//! ```
mod infra;
mod table;

use anyhow::{anyhow, bail, ensure, Context};
use clap::Parser;
use flash_loyalty::grpc::proto::{
    self, events_client::EventsClient, ledger_client::LedgerClient,
    programs_client::ProgramsClient, tiers_client::TiersClient, PurchaseSource,
};
use flash_testing_support::dispatch::{Authed, Bearer};
use flash_testing_support::process::ScratchDatabase;
use infra::World;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use table::Table;
use tonic::transport::Channel;

const PROGRAM: &str = "demo";
const DAILY_CAP: i64 = 500;

#[derive(Debug, Parser)]
#[command(
    name = "flash-demo",
    about = "The Flash walkthrough: award, replay, FIFO spend, cap outage, tier upgrade, \
             refund and audit against a private server and Redis"
)]
struct Cli {
    /// The database the walkthrough drops, creates and uses (`flash_…demo…`).
    #[arg(long, default_value = "flash_demo")]
    database: String,
    /// Any database of the local PostgreSQL, to create and drop the walkthrough's from.
    #[arg(
        long,
        env = "FLASH_DEMO_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    admin_url: String,
    /// Drop the database at the end (by default it stays, to be looked at).
    #[arg(long)]
    drop: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let database = match infra::database(&cli.admin_url, &cli.database) {
        Ok(database) => database,
        Err(error) => {
            eprintln!("demo: {error:#}");
            return ExitCode::from(2);
        }
    };
    let log = std::env::temp_dir().join(format!("flash-demo-{}.log", std::process::id()));
    // On Ctrl-C the walkthrough is dropped, which stops its server and Redis.
    let outcome = tokio::select! {
        outcome = run(&database, &log) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    if cli.drop {
        if let Err(error) = database.drop_it().await {
            eprintln!("demo: {error:#}");
        }
    }
    match outcome {
        Ok(()) => {
            let _ = std::fs::remove_file(&log);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("\ndemo: FAILED: {error:#}");
            if std::fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
                eprintln!(
                    "demo: the server's log is {}; its end:\n{}",
                    log.display(),
                    infra::log_tail(&log, 20)
                );
            } else {
                let _ = std::fs::remove_file(&log);
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(database: &ScratchDatabase, log: &Path) -> anyhow::Result<()> {
    println!("Flash walkthrough: an award, a FIFO spend, a cap outage and a tier upgrade,");
    println!("and the ledger staying correct throughout.\n");
    database.recreate().await?;
    let world = tokio::task::block_in_place(|| World::start(database.url.clone(), log))?;
    println!(
        "demo: database {}, flash serve on 127.0.0.1:{}, its own redis-server on 127.0.0.1:{}",
        database.name, world.server.port, world.redis.port
    );
    let db = infra::connect(&database.url).await?;
    let channel = tonic::transport::Endpoint::from_shared(world.server.endpoint())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .context("connecting to flash serve")?;
    let mut demo = Demo::new(world, db, channel);
    demo.create_program_and_member().await?;
    demo.award_and_replay().await?;
    demo.fifo_spend().await?;
    demo.cap_outage().await?;
    demo.tier_upgrade().await?;
    demo.refund().await?;
    demo.audit().await?;
    Ok(())
}

struct Demo {
    world: World,
    db: tokio_postgres::Client,
    programs: ProgramsClient<Authed>,
    ledger: LedgerClient<Authed>,
    tiers: TiersClient<Authed>,
    events: EventsClient<Authed>,
    member: String,
    step: u32,
}

/// A point batch as PostgreSQL holds it, labelled with the key of the call that credited it.
struct Batch {
    id: String,
    credited_by: String,
    amount: i64,
    remaining: i64,
    earned_at: String,
    expires_on: String,
}

/// The last 8 characters of an id: the random end of a UUIDv7, whose start is its time.
fn short(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    chars[chars.len().saturating_sub(8)..].iter().collect()
}

/// A gRPC code as the protocol spells it: `UNAVAILABLE`, `RESOURCE_EXHAUSTED`.
fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (index, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && index > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

fn ok(line: impl AsRef<str>) {
    println!("  ok: {}", line.as_ref());
}

fn say(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
}

impl Demo {
    /// The walkthrough calling over `channel` as the world's client.
    fn new(world: World, db: tokio_postgres::Client, channel: Channel) -> Demo {
        let bearer = Bearer::new(&world.token);
        Demo {
            programs: ProgramsClient::with_interceptor(channel.clone(), bearer.clone()),
            ledger: LedgerClient::with_interceptor(channel.clone(), bearer.clone()),
            tiers: TiersClient::with_interceptor(channel.clone(), bearer.clone()),
            events: EventsClient::with_interceptor(channel, bearer),
            world,
            db,
            member: uuid::Uuid::new_v4().to_string(),
            step: 0,
        }
    }

    fn heading(&mut self, title: &str) {
        self.step += 1;
        println!("\n== {}. {title} ==\n", self.step);
    }

    // ---------------------------------------------------------------- reading the state

    async fn member_row(&mut self) -> anyhow::Result<proto::Member> {
        self.ledger
            .get_member(proto::GetMemberRequest {
                program_id: PROGRAM.into(),
                member_id: self.member.clone(),
            })
            .await
            .context("GetMember")?
            .into_inner()
            .member
            .context("GetMember answered no member")
    }

    async fn print_balance(&mut self) -> anyhow::Result<proto::Member> {
        let member = self.member_row().await?;
        let mut table = Table::new(&["member", "balance", "lifetime earned", "tier", "entries"]);
        table.row(vec![
            short(&member.member_id),
            member.balance_points.to_string(),
            member.lifetime_earned_points.to_string(),
            member.tier_code.clone(),
            self.entry_count().await?.to_string(),
        ]);
        table.print();
        Ok(member)
    }

    /// The member's ledger entries, counted in PostgreSQL.
    async fn entry_count(&self) -> anyhow::Result<i64> {
        let row = self
            .db
            .query_one(
                "SELECT count(*) FROM ledger_entries \
                 WHERE program_id = $1 AND member_id = $2::text::uuid",
                &[&PROGRAM, &self.member],
            )
            .await?;
        Ok(row.get(0))
    }

    async fn entries_with_key(&self, key: &str) -> anyhow::Result<i64> {
        let row = self
            .db
            .query_one(
                "SELECT count(*) FROM ledger_entries \
                 WHERE program_id = $1 AND idempotency_key = $2",
                &[&PROGRAM, &key],
            )
            .await?;
        Ok(row.get(0))
    }

    async fn batches(&self) -> anyhow::Result<Vec<Batch>> {
        let rows = self
            .db
            .query(
                "SELECT b.batch_id::text, e.idempotency_key, b.amount, b.remaining, \
                        to_char(b.earned_at AT TIME ZONE 'UTC', 'HH24:MI:SS.MS'), \
                        to_char(b.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') \
                 FROM point_batches b \
                 JOIN ledger_entries e \
                   ON e.program_id = b.program_id AND e.entry_id = b.entry_id \
                 WHERE b.program_id = $1 AND b.member_id = $2::text::uuid \
                 ORDER BY b.earned_at, b.batch_id",
                &[&PROGRAM, &self.member],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| Batch {
                id: row.get(0),
                credited_by: row.get(1),
                amount: row.get(2),
                remaining: row.get(3),
                earned_at: row.get(4),
                expires_on: row.get(5),
            })
            .collect())
    }

    async fn print_batches(&self) -> anyhow::Result<Vec<Batch>> {
        let batches = self.batches().await?;
        let mut table = Table::new(&[
            "batch",
            "credited by",
            "amount",
            "remaining",
            "earned (UTC)",
            "expires",
        ]);
        for batch in &batches {
            table.row(vec![
                short(&batch.id),
                batch.credited_by.clone(),
                batch.amount.to_string(),
                batch.remaining.to_string(),
                batch.earned_at.clone(),
                batch.expires_on.clone(),
            ]);
        }
        table.print();
        Ok(batches)
    }

    /// The allocation rows an entry wrote, as PostgreSQL holds them: (batch id, the key
    /// that credited the batch, points; negative for a draw).
    async fn allocations(&self, entry_id: &str) -> anyhow::Result<Vec<(String, String, i64)>> {
        let rows = self
            .db
            .query(
                "SELECT a.batch_id::text, e.idempotency_key, a.points \
                 FROM allocations a \
                 JOIN point_batches b ON b.program_id = a.program_id AND b.batch_id = a.batch_id \
                 JOIN ledger_entries e \
                   ON e.program_id = b.program_id AND e.entry_id = b.entry_id \
                 WHERE a.program_id = $1 AND a.entry_id = $2::text::uuid \
                 ORDER BY b.earned_at, b.batch_id",
                &[&PROGRAM, &entry_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect())
    }

    async fn print_allocations(
        &self,
        entry_id: &str,
    ) -> anyhow::Result<Vec<(String, String, i64)>> {
        let allocations = self.allocations(entry_id).await?;
        let mut table = Table::new(&["entry", "batch", "batch credited by", "points"]);
        for (batch, credited_by, points) in &allocations {
            table.row(vec![
                short(entry_id),
                short(batch),
                credited_by.clone(),
                points.to_string(),
            ]);
        }
        table.print();
        Ok(allocations)
    }

    // ---------------------------------------------------------------- calls

    fn award_request(
        &self,
        key: &str,
        source: PurchaseSource,
        external_ref: &str,
        amount_minor: i64,
    ) -> proto::AwardRequest {
        proto::AwardRequest {
            program_id: PROGRAM.into(),
            member_id: self.member.clone(),
            idempotency_key: key.into(),
            source: source as i32,
            external_ref: external_ref.into(),
            amount_minor,
            currency: "USD".into(),
            occurred_at: Some(flash_testing_support::timestamp(
                chrono::Utc::now() - chrono::Duration::seconds(5),
            )),
        }
    }

    async fn award(
        &mut self,
        request: &proto::AwardRequest,
    ) -> anyhow::Result<proto::AwardResponse> {
        Ok(self
            .ledger
            .award(request.clone())
            .await
            .with_context(|| format!("Award {}", request.idempotency_key))?
            .into_inner())
    }

    fn award_table(rows: &[(&str, &proto::AwardResponse)]) -> Table {
        let mut table = Table::new(&[
            "call",
            "entry",
            "requested",
            "awarded",
            "capped",
            "replayed",
            "balance",
        ]);
        for (call, response) in rows {
            table.row(vec![
                call.to_string(),
                short(&response.entry_id),
                response.requested_points.to_string(),
                response.awarded_points.to_string(),
                response.capped.to_string(),
                response.replayed.to_string(),
                response.balance_points.to_string(),
            ]);
        }
        table
    }

    // ---------------------------------------------------------------- the steps

    async fn create_program_and_member(&mut self) -> anyhow::Result<()> {
        self.heading("A program and a member");
        let tier =
            |code: &str, name: &str, qualify: i64, maintain: i64, multiplier: i64| proto::Tier {
                code: code.into(),
                name: name.into(),
                qualify_points: qualify,
                maintain_points: maintain,
                multiplier_bp: multiplier,
            };
        let rules = proto::ProgramRules {
            currency: "USD".into(),
            timezone: "Europe/Paris".into(),
            base_rate_bp: 10_000,
            min_amount_minor: 100,
            daily_cap_points: Some(DAILY_CAP),
            points_validity_days: 365,
            tiers: vec![
                tier("member", "Member", 0, 0, 10_000),
                tier("silver", "Silver", 400, 300, 12_500),
                tier("gold", "Gold", 2_000, 1_600, 15_000),
            ],
            ..Default::default()
        };
        let program = self
            .programs
            .create_program(proto::CreateProgramRequest {
                program_id: PROGRAM.into(),
                name: "Flash demo".into(),
                rules: Some(rules),
            })
            .await
            .context("CreateProgram")?
            .into_inner()
            .program
            .context("CreateProgram answered no program")?;
        let rules = program.rules.clone().unwrap_or_default();
        say(format!(
            "Program `{}`: {}, 1 point per dollar from $1, at most {} purchase points a member \
             a day ({} days),",
            program.program_id,
            rules.currency,
            rules.daily_cap_points.unwrap_or_default(),
            rules.timezone
        ));
        say(format!(
            "points valid {} days, and this tier ladder on points earned:",
            rules.points_validity_days
        ));
        let mut ladder = Table::new(&["tier", "name", "qualify at", "keep at", "multiplier"]);
        for tier in &rules.tiers {
            ladder.row(vec![
                tier.code.clone(),
                tier.name.clone(),
                tier.qualify_points.to_string(),
                tier.maintain_points.to_string(),
                format!("{:.2}x", tier.multiplier_bp as f64 / 10_000.0),
            ]);
        }
        ladder.print();
        let enrolled = self
            .ledger
            .enroll_member(proto::EnrollMemberRequest {
                program_id: PROGRAM.into(),
                member_id: self.member.clone(),
                ..Default::default()
            })
            .await
            .context("EnrollMember")?
            .into_inner();
        ensure!(
            !enrolled.already_enrolled,
            "a new member was already enrolled"
        );
        say(format!("\nMember {} enrolled:", self.member));
        let member = self.print_balance().await?;
        ensure!(
            member.balance_points == 0 && member.tier_code == "member",
            "a new member starts with 0 points in tier `member`, not {} in `{}`",
            member.balance_points,
            member.tier_code
        );
        Ok(())
    }

    async fn award_and_replay(&mut self) -> anyhow::Result<()> {
        self.heading("An award and its idempotent replay");
        say("A $120.00 receipt earns 120 points under the key `demo-award-1`; then the very same");
        say("request is sent again, as a client retrying after a lost answer would.");
        let request = self.award_request(
            "demo-award-1",
            PurchaseSource::Receipt,
            "receipt-1001",
            12_000,
        );
        let first = self.award(&request).await?;
        let entries_before = self.entry_count().await?;
        let replay = self.award(&request).await?;
        let entries_after = self.entry_count().await?;
        Self::award_table(&[("Award", &first), ("Award again", &replay)]).print();
        ensure!(
            first.awarded_points == 120 && !first.replayed,
            "the first award credited {} points (replayed: {}), not 120",
            first.awarded_points,
            first.replayed
        );
        ensure!(
            replay.replayed && replay.entry_id == first.entry_id,
            "the replay did not answer the original entry (replayed: {})",
            replay.replayed
        );
        ensure!(
            entries_after == entries_before && replay.balance_points == first.balance_points,
            "the replay wrote something: {entries_before} entries before, {entries_after} after"
        );
        ok(format!(
            "the replay answered the same entry {} with replayed: true and wrote nothing \
             ({entries_before} entry before, {entries_after} after)",
            short(&first.entry_id)
        ));
        Ok(())
    }

    async fn fifo_spend(&mut self) -> anyhow::Result<()> {
        self.heading("A FIFO spend across two batches");
        let request = self.award_request(
            "demo-award-2",
            PurchaseSource::Shopify,
            "shopify-2002",
            8_000,
        );
        let second = self.award(&request).await?;
        ensure!(
            second.awarded_points == 80,
            "a $80.00 order credited {} points, not 80",
            second.awarded_points
        );
        say("A $80.00 Shopify order adds a second batch of 80 points. Every credit is a batch:");
        let batches = self.print_batches().await?;
        ensure!(batches.len() == 2, "{} batches, not 2", batches.len());
        say("\nSpending 150 points draws the oldest batch first, then the next; each draw is an");
        say("allocation row, so every spent point leads back to the purchase that earned it:");
        let spend = self
            .ledger
            .spend(proto::SpendRequest {
                program_id: PROGRAM.into(),
                member_id: self.member.clone(),
                idempotency_key: "demo-spend-1".into(),
                points: 150,
                reference: "reward: canvas tote bag".into(),
            })
            .await
            .context("Spend")?
            .into_inner();
        let allocations = self.print_allocations(&spend.entry_id).await?;
        let expected = vec![
            (batches[0].id.clone(), "demo-award-1".to_owned(), -120),
            (batches[1].id.clone(), "demo-award-2".to_owned(), -30),
        ];
        ensure!(
            allocations == expected,
            "the spend's allocation rows are {allocations:?}, not 120 from demo-award-1's batch \
             then 30 from demo-award-2's"
        );
        let answered: Vec<(String, i64)> = spend
            .allocations
            .iter()
            .map(|a| (a.batch_id.clone(), a.points))
            .collect();
        ensure!(
            answered == [(batches[0].id.clone(), 120), (batches[1].id.clone(), 30)],
            "the Spend answer's allocations {answered:?} differ from its rows"
        );
        say("\nThe batches after the spend:");
        let after = self.print_batches().await?;
        ensure!(
            after.iter().map(|b| b.remaining).collect::<Vec<_>>() == [0, 50],
            "the batches' remaining points are not 0 and 50 after the spend"
        );
        let member = self.print_balance().await?;
        ensure!(
            member.balance_points == 50 && spend.balance_points == 50,
            "the balance after the spend is {}, not 50",
            member.balance_points
        );
        ok("allocation rows: 120 points from demo-award-1's batch, then 30 from demo-award-2's");
        Ok(())
    }

    async fn cap_outage(&mut self) -> anyhow::Result<()> {
        self.heading("A cap outage");
        say(format!(
            "The daily cap ({DAILY_CAP} points) is reserved in Redis, and it never fails open. \
             Stopping the"
        ));
        say("walkthrough's redis-server, then sending a $100.00 marketplace order (`demo-award-3`):");
        let request = self.award_request(
            "demo-award-3",
            PurchaseSource::Marketplace,
            "marketplace-3003",
            10_000,
        );
        let balance_before = self.member_row().await?.balance_points;
        let entries_before = self.entry_count().await?;
        tokio::task::block_in_place(|| self.world.redis.stop());
        let refused = self.ledger.award(request.clone()).await;
        let status = match refused {
            Ok(response) => bail!(
                "with Redis stopped the award was accepted: {} points (replayed: {})",
                response.get_ref().awarded_points,
                response.get_ref().replayed
            ),
            Err(status) => status,
        };
        say(format!(
            "  Award demo-award-3 -> {}: {}",
            code_name(status.code()),
            status.message()
        ));
        ensure!(
            status.code() == tonic::Code::Unavailable,
            "with Redis stopped the award failed with {:?}, not UNAVAILABLE: {}",
            status.code(),
            status.message()
        );
        let balance_after = self.member_row().await?.balance_points;
        let entries_after = self.entry_count().await?;
        let mut table = Table::new(&["", "balance", "entries"]);
        table.row(vec![
            "before".into(),
            balance_before.to_string(),
            entries_before.to_string(),
        ]);
        table.row(vec![
            "after UNAVAILABLE".into(),
            balance_after.to_string(),
            entries_after.to_string(),
        ]);
        table.print();
        ensure!(
            balance_after == balance_before && entries_after == entries_before,
            "the withheld award wrote something: balance {balance_before} -> {balance_after}, \
             entries {entries_before} -> {entries_after}"
        );
        ok(format!(
            "UNAVAILABLE and nothing written: balance {balance_before} -> {balance_after}, \
             entries {entries_before} -> {entries_after}"
        ));

        say("\nRedis restarted (empty: its counters are rebuilt from PostgreSQL, never read as");
        say("zero); the client sends the same key again, retrying while the server reconnects:");
        tokio::task::block_in_place(|| self.world.redis.restart())
            .context("restarting the private redis-server")?;
        let mut attempts = 0;
        let awarded = loop {
            attempts += 1;
            match self.ledger.award(request.clone()).await {
                Ok(response) => break response.into_inner(),
                Err(status) if status.code() == tonic::Code::Unavailable && attempts < 40 => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(status) => bail!(
                    "after the Redis restart, Award demo-award-3 failed ({} attempts): {status}",
                    attempts
                ),
            }
        };
        let replay = self.award(&request).await?;
        Self::award_table(&[
            (&format!("Award (attempt {attempts})"), &awarded),
            ("Award again", &replay),
        ])
        .print();
        ensure!(
            awarded.awarded_points == 100 && !awarded.replayed,
            "after the restart the award credited {} points (replayed: {}), not 100",
            awarded.awarded_points,
            awarded.replayed
        );
        ensure!(
            replay.replayed && replay.entry_id == awarded.entry_id,
            "the award after the restart did not replay"
        );
        let with_key = self.entries_with_key("demo-award-3").await?;
        let entries = self.entry_count().await?;
        ensure!(
            with_key == 1 && entries == entries_before + 1,
            "demo-award-3 has {with_key} entries and the member {entries} (was {entries_before})"
        );
        let member = self.print_balance().await?;
        ensure!(
            member.balance_points == balance_before + 100,
            "the balance is {}, not {}",
            member.balance_points,
            balance_before + 100
        );
        ok(format!(
            "demo-award-3 awarded once after the restart: 1 entry, balance {balance_before} -> {}",
            member.balance_points
        ));
        Ok(())
    }

    async fn tier_status(&mut self) -> anyhow::Result<proto::TierStatus> {
        self.tiers
            .get_tier_status(proto::GetTierStatusRequest {
                program_id: PROGRAM.into(),
                member_id: self.member.clone(),
            })
            .await
            .context("GetTierStatus")?
            .into_inner()
            .status
            .context("GetTierStatus answered no status")
    }

    fn print_tier_status(label: &str, status: &proto::TierStatus) {
        let mut table = Table::new(&["", "tier", "status points", "next tier", "points to go"]);
        table.row(vec![
            label.into(),
            status.tier_code.clone(),
            status.status_points.to_string(),
            status.next_tier_code.clone(),
            status.points_to_next_tier.to_string(),
        ]);
        table.print();
    }

    async fn tier_upgrade(&mut self) -> anyhow::Result<()> {
        self.heading("A tier upgrade and its event");
        say("Tiers follow the points earned (status points), never the balance: spending 150");
        say("did not lower them.");
        let before = self.tier_status().await?;
        Self::print_tier_status("before", &before);
        ensure!(
            before.tier_code == "member" && before.status_points == 300,
            "before the upgrade the member is `{}` with {} status points, not `member` with 300",
            before.tier_code,
            before.status_points
        );
        say("\nA $150.00 receipt (`demo-award-4`) crosses Silver's 400 in the same transaction:");
        let request = self.award_request(
            "demo-award-4",
            PurchaseSource::Receipt,
            "receipt-4004",
            15_000,
        );
        let award = self.award(&request).await?;
        Self::award_table(&[("Award", &award)]).print();
        let after = self.tier_status().await?;
        Self::print_tier_status("after", &after);
        ensure!(
            after.tier_code == "silver" && after.status_points == 450,
            "after the award the member is `{}` with {} status points, not `silver` with 450",
            after.tier_code,
            after.status_points
        );

        say(
            "\nThe tier history and the event `Events/Subscribe` streams (from the outbox, written",
        );
        say("in the award's transaction):");
        let history = self
            .tiers
            .list_tier_history(proto::ListTierHistoryRequest {
                program_id: PROGRAM.into(),
                member_id: self.member.clone(),
                ..Default::default()
            })
            .await
            .context("ListTierHistory")?
            .into_inner();
        let mut table = Table::new(&["change", "from", "to", "status points", "by", "credit"]);
        for change in &history.changes {
            let kind = proto::TierChangeKind::try_from(change.kind)
                .map(|k| {
                    k.as_str_name()
                        .trim_start_matches("TIER_CHANGE_KIND_")
                        .to_lowercase()
                })
                .unwrap_or_else(|_| change.kind.to_string());
            table.row(vec![
                kind,
                change.from_tier_code.clone(),
                change.to_tier_code.clone(),
                change.status_points.to_string(),
                change.actor.clone(),
                short(&change.entry_id),
            ]);
        }
        table.print();
        ensure!(
            history.changes.len() == 1
                && history.changes[0].kind == proto::TierChangeKind::Upgraded as i32
                && history.changes[0].entry_id == award.entry_id,
            "the tier history is not one upgrade by demo-award-4's entry"
        );

        let mut stream = self
            .events
            .subscribe(proto::SubscribeRequest {
                program_id: PROGRAM.into(),
                after_cursor: String::new(),
                event_types: vec!["tier.upgraded".into()],
            })
            .await
            .context("Events/Subscribe")?
            .into_inner();
        let event = tokio::time::timeout(Duration::from_secs(15), stream.message())
            .await
            .map_err(|_| anyhow!("no tier.upgraded event within 15 s"))?
            .context("Events/Subscribe")?
            .and_then(|message| message.event)
            .context("the event stream ended without an event")?;
        drop(stream);
        let payload: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&event.payload_json).context("the event's payload_json")?;
        let mut table = Table::new(&["event", "field", "value"]);
        for (index, (field, value)) in payload.iter().enumerate() {
            let value = match value {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            let event_type = if index == 0 {
                event.event_type.clone()
            } else {
                String::new()
            };
            table.row(vec![event_type, field.clone(), value]);
        }
        table.print();
        ensure!(
            payload.get("to_tier_code").and_then(|v| v.as_str()) == Some("silver")
                && payload.get("entry_id").and_then(|v| v.as_str())
                    == Some(award.entry_id.as_str()),
            "the tier.upgraded payload does not name silver and demo-award-4's entry: {}",
            event.payload_json
        );
        ensure!(
            event.event_type == "tier.upgraded" && event.member_id == self.member,
            "the first tier.upgraded event is `{}` for {}",
            event.event_type,
            event.member_id
        );
        ok("tier.upgraded event: member -> silver with the award that crossed 400");
        Ok(())
    }

    async fn refund(&mut self) -> anyhow::Result<()> {
        self.heading("A refund");
        say("One item of receipt-4004 comes back: ReverseAward takes 50 of its points back, from");
        say("the award's own batch first:");
        let reversal = self
            .ledger
            .reverse_award(proto::ReverseAwardRequest {
                program_id: PROGRAM.into(),
                idempotency_key: "demo-refund-1".into(),
                award: Some(proto::EntryRef {
                    r#ref: Some(proto::entry_ref::Ref::IdempotencyKey("demo-award-4".into())),
                }),
                points: Some(50),
                reason: "refund: one item of receipt-4004 returned".into(),
            })
            .await
            .context("ReverseAward")?
            .into_inner();
        let mut table = Table::new(&[
            "call",
            "entry",
            "reversed",
            "recovered",
            "unrecovered",
            "still reversible",
            "balance",
        ]);
        table.row(vec![
            "ReverseAward".into(),
            short(&reversal.entry_id),
            reversal.reversed_points.to_string(),
            reversal.recovered_points.to_string(),
            reversal.unrecovered_points.to_string(),
            reversal.remaining_reversible_points.to_string(),
            reversal.balance_points.to_string(),
        ]);
        table.print();
        say("");
        let allocations = self.print_allocations(&reversal.entry_id).await?;
        ensure!(
            reversal.reversed_points == 50
                && reversal.recovered_points == 50
                && reversal.unrecovered_points == 0
                && reversal.remaining_reversible_points == 100,
            "the refund reversed {} (recovered {}, unrecovered {}), not 50 of 150",
            reversal.reversed_points,
            reversal.recovered_points,
            reversal.unrecovered_points
        );
        ensure!(
            allocations.len() == 1 && allocations[0].1 == "demo-award-4" && allocations[0].2 == -50,
            "the refund's allocation rows are {allocations:?}, not 50 from demo-award-4's batch"
        );
        say("\nThe batches and the balance now:");
        self.print_batches().await?;
        let member = self.print_balance().await?;
        ensure!(
            member.balance_points == 250 && member.lifetime_earned_points == 400,
            "after the refund the balance is {} and lifetime earned {}, not 250 and 400",
            member.balance_points,
            member.lifetime_earned_points
        );
        ok("refund: 50 points taken back from demo-award-4's batch, balance 300 -> 250");
        Ok(())
    }

    async fn audit(&mut self) -> anyhow::Result<()> {
        self.heading("The audit");
        say("The member's history, newest first:");
        let entries = self
            .ledger
            .list_entries(proto::ListEntriesRequest {
                program_id: PROGRAM.into(),
                member_id: self.member.clone(),
                page_size: 200,
                page_token: String::new(),
            })
            .await
            .context("ListEntries")?
            .into_inner()
            .entries;
        let mut table = Table::new(&["entry", "kind", "points", "what"]);
        for entry in &entries {
            let kind = proto::EntryKind::try_from(entry.kind)
                .map(|k| {
                    k.as_str_name()
                        .trim_start_matches("ENTRY_KIND_")
                        .to_lowercase()
                })
                .unwrap_or_else(|_| entry.kind.to_string());
            let what = if entry.external_ref.is_empty() {
                entry.reason.clone()
            } else {
                entry.external_ref.clone()
            };
            table.row(vec![
                short(&entry.entry_id),
                kind,
                entry.points.to_string(),
                what,
            ]);
        }
        table.print();
        let sum: i64 = entries.iter().map(|e| e.points).sum();
        ensure!(
            entries.len() == 6 && sum == 250,
            "the history has {} entries summing to {sum}, not 6 summing to 250",
            entries.len()
        );
        say(format!("\n$ flash audit --program {PROGRAM}"));
        let output =
            tokio::task::block_in_place(|| self.world.flash(&["audit", "--program", PROGRAM]))?;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            println!("  {line}");
        }
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            println!("  {line}");
        }
        ensure!(
            output.status.success(),
            "flash audit --program {PROGRAM} failed ({})",
            output.status
        );
        ok(format!("flash audit --program {PROGRAM} exited 0"));
        println!("\ndemo: the ledger ties out");
        Ok(())
    }
}

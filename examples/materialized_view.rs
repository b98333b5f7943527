//! A materialized view kept by a consumer group: order totals per customer, in a file.
//!
//! The topic (`orders` by default) holds one record per order: the key is the customer
//! (`customer-17`), the value the amount in cents as text (`1250`). The view is a file
//! (the *store*) with two things in it, always written together in one atomic rename:
//!
//! - per customer: the number of orders and their sum in cents;
//! - per partition: the offset up to which the totals include the partition's records.
//!
//! ```sh
//! materialized_view produce --count 2000            # create `orders`, send 2000 orders
//! materialized_view run --store totals.view         # bring the view up to date, print it
//! materialized_view rebuild --store totals.view     # replay from offset zero, switch
//! ```
//!
//! Why the offsets are in the store: the consumer is at-least-once (it commits after the
//! store is written, so a crash between the two leaves the group's committed offset
//! behind the store). If `run` started from the committed offset, the records between the
//! two would be counted twice; and after a switch to a rebuilt store, which may be behind
//! the group, some would be missed. So the store is the truth: when the group assigns a
//! partition, `run` seeks it to the offset the store holds (the beginning when the store
//! has none) and each record lands in the totals exactly once. The group shares the
//! partitions out, and its commits are the bookmark that shows the view's lag.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::{Args, Parser, Subcommand};
use fjord::client::{
    Admin, AutoOffsetReset, ClientError, Consumer, ConsumerConfig, ConsumerRecord, OffsetSpec,
    Producer, ProducerConfig, RebalanceListener, Seek, TopicPartition,
};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

#[derive(Parser)]
#[command(about = "Order totals per customer, kept by a consumer group (a Fjord example)")]
struct Cli {
    /// The broker's gRPC address.
    #[arg(
        long,
        global = true,
        env = "FJORD_BROKERS",
        default_value = "127.0.0.1:9192"
    )]
    brokers: String,
    /// The topic of orders.
    #[arg(long, global = true, default_value = "orders")]
    topic: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates the topic if it is missing and sends COUNT pseudo-random orders.
    Produce(ProduceArgs),
    /// Brings the store up to date as a member of GROUP, then prints the totals.
    Run {
        #[command(flatten)]
        view: ViewArgs,
        /// Keep applying new orders until Ctrl-C.
        #[arg(long)]
        follow: bool,
    },
    /// Replays the topic from offset zero into STORE.rebuild, then renames it over STORE.
    Rebuild(ViewArgs),
}

#[derive(Args)]
struct ProduceArgs {
    /// How many orders to send.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// How many customers place them (`customer-0` and up).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    customers: u64,
    /// The same seed gives the same orders.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Partitions of the topic, if it is created.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
}

#[derive(Args)]
struct ViewArgs {
    /// The consumer group that keeps the view.
    #[arg(long, default_value = "order-totals")]
    group: String,
    /// The store file (STORE.tmp, STORE.lock and STORE.rebuild go next to it).
    #[arg(long, default_value = "order-totals.view")]
    store: PathBuf,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Produce(args) => produce(&cli, args).await,
        Command::Run { view, follow } => {
            let mode = Mode::Run { follow: *follow };
            let built = build(&cli, &view.group, &view.store, mode).await;
            built.and_then(|view| view.print())
        }
        Command::Rebuild(view) => rebuild(&cli, view).await,
    };
    if let Err(e) = result {
        eprintln!("materialized_view: {e}");
        std::process::exit(1);
    }
}

/// Sends orders: a pseudo-random customer and an amount from $1.00 to $1,000.99.
async fn produce(cli: &Cli, args: &ProduceArgs) -> Result<()> {
    let (topic, partitions) = (cli.topic.as_str(), args.partitions);
    let admin = Admin::connect(&cli.brokers).await?;
    match admin.create_topic(topic, partitions, &[]).await {
        Ok(()) => eprintln!("created topic {topic} with {partitions} partitions"),
        Err(ClientError::TopicAlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let producer = Producer::connect(&cli.brokers, ProducerConfig::default()).await?;
    let mut rng = SplitMix64(args.seed);
    // `send` queues the record and returns a future of its acknowledgement. Keep a window
    // of them in flight, awaiting the oldest, so that memory stays bounded for any count.
    let mut acks = VecDeque::new();
    for _ in 0..args.count {
        let customer = format!("customer-{}", rng.next() % args.customers);
        let cents = (100 + rng.next() % 100_000).to_string();
        acks.push_back(producer.send(topic, Some(customer.into()), Some(cents.into()), vec![]));
        if acks.len() >= 10_000 {
            acks.pop_front().expect("not empty").await?;
        }
    }
    for ack in acks {
        ack.await?;
    }
    eprintln!("produced {} orders to {topic}", args.count);
    Ok(())
}

/// Builds the view afresh under a new group, then switches it in if no `run` holds STORE.
async fn rebuild(cli: &Cli, args: &ViewArgs) -> Result<()> {
    let admin = Admin::connect(&cli.brokers).await?;
    let offsets = admin.list_offsets(&cli.topic, OffsetSpec::Latest).await?;
    let total: i64 = offsets
        .iter()
        .map(|p| p.high_watermark - p.log_start_offset)
        .sum();
    // A group of its own: the live group keeps its partitions (a `run --follow` can go on)
    // while this one reads them all, from the beginning since its store starts empty.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let group = format!("{}-rebuild-{}", args.group, now.as_millis());
    let (store, rebuilt) = (&args.store, with_suffix(&args.store, ".rebuild"));
    eprintln!("rebuild: {total} records into {}", rebuilt.display());
    let total = total as u64; // a high watermark is never below the log start offset
    let view = build(cli, &group, &rebuilt, Mode::Rebuild { total }).await?;
    if let Err(e) = admin.delete_group(&group).await {
        eprintln!("rebuild: could not delete group {group}: {e}");
    }
    // The switch. The rebuilt store holds its own offsets, and `run` resumes from them,
    // so switching is one rename, made while no `run` has the store open.
    match try_lock(store)? {
        Some(_lock) => {
            fs::rename(&rebuilt, store)?;
            sync_dir(store)?;
            eprintln!("rebuild: switched {} to the rebuilt view", store.display());
        }
        None => {
            let (store, rebuilt) = (store.display(), rebuilt.display());
            eprintln!("rebuild: {store} is in use: stop its `run`, then `mv {rebuilt} {store}`");
        }
    }
    view.print()
}

#[derive(Clone, Copy)]
enum Mode {
    /// Continue from the store file (empty if missing); with `follow`, until Ctrl-C.
    Run { follow: bool },
    /// Start from an empty store; report progress against `total` records.
    Rebuild { total: u64 },
}

/// What the poll loop and the rebalance listener (called inside `poll`) share.
struct Shared {
    view: View,
    /// The store file.
    path: PathBuf,
    /// Partitions assigned since the loop last looked, with where the store is in them.
    seeks: Vec<(TopicPartition, Seek)>,
}

struct Listener(Arc<Mutex<Shared>>);

impl RebalanceListener for Listener {
    fn on_assigned(&mut self, partitions: &[TopicPartition]) {
        let mut shared = self.0.lock().unwrap();
        for tp in partitions {
            let next = shared.view.next_offsets.get(&tp.partition);
            let seek = next.map_or(Seek::Beginning, |&offset| Seek::Offset(offset));
            shared.seeks.push((tp.clone(), seek));
        }
    }

    /// Called before the consumer gives partitions up and commits their positions: write
    /// first, so that a commit never covers records the file does not hold. (The loop
    /// writes after every poll already; a view that writes less often needs this.)
    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        let mut shared = self.0.lock().unwrap();
        shared.seeks.retain(|(tp, _)| !partitions.contains(tp));
        if let Err(e) = shared.view.save(&shared.path) {
            eprintln!("materialized_view: writing the store on revoke failed: {e}");
        }
    }
}

/// Brings the view in `store` up to date as a member of `group`: poll, apply, write the
/// store, commit; until caught up (or Ctrl-C with `follow`).
async fn build(cli: &Cli, group: &str, store: &Path, mode: Mode) -> Result<View> {
    let _lock = try_lock(store)?.ok_or_else(|| format!("{} is in use", store.display()))?;
    let view = match mode {
        Mode::Run { .. } => View::load(store)?,
        Mode::Rebuild { .. } => View::default(),
    };
    let (path, seeks) = (store.to_path_buf(), Vec::new());
    let shared = Arc::new(Mutex::new(Shared { view, path, seeks }));
    let config = ConsumerConfig {
        group_id: Some(group.to_owned()),
        // Where to go if the store's offset is no longer in the log (retention deleted it).
        auto_offset_reset: AutoOffsetReset::Earliest,
        enable_auto_commit: false, // we commit after writing the store
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::connect(&cli.brokers, config).await?;
    consumer.set_rebalance_listener(Box::new(Listener(shared.clone())));
    consumer.subscribe(&[cli.topic.as_str()]).await?;
    let (mut applied, mut tenths, mut following) = (0, 0, false);
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        if caught_up(&consumer) {
            match mode {
                Mode::Run { follow: true } if !following => {
                    eprintln!("materialized_view: caught up; following (Ctrl-C stops)");
                    following = true;
                }
                Mode::Run { follow: true } => {}
                _ => break,
            }
        }
        let mut records = tokio::select! {
            records = consumer.poll() => records?,
            _ = &mut stop => break,
        };
        // Newly assigned partitions start where the store is, not where the group
        // committed (see the top of this file); what this poll returned of them is
        // dropped and read again from there.
        let seeks = std::mem::take(&mut shared.lock().unwrap().seeks);
        for (tp, seek) in seeks {
            consumer.seek(&tp.topic, tp.partition, seek).await?;
            records.retain(|r| r.partition != tp.partition);
        }
        if !records.is_empty() {
            let mut shared = shared.lock().unwrap();
            records.iter().for_each(|r| shared.view.apply(r));
            shared.view.save(&shared.path)?;
            applied += records.len() as u64;
        }
        // Written first, committed second. A failed commit only leaves the group's
        // bookmark behind the store, which the seeks above make harmless.
        if let Err(e) = consumer.commit().await {
            eprintln!("materialized_view: commit failed (retried after the next poll): {e}");
        }
        if let Mode::Rebuild { total } = mode
            && total > 0
            && applied * 10 / total > tenths
        {
            tenths = (applied * 10 / total).min(10);
            eprintln!("rebuild: {applied}/{total} records ({}%)", tenths * 10);
        }
    }
    consumer.close().await?; // leaves the group at once, so its partitions can move
    let view = std::mem::take(&mut shared.lock().unwrap().view);
    view.save(store)?; // a last write, so the file exists even for an empty topic
    eprintln!(
        "materialized_view: applied {applied} records to {}",
        store.display()
    );
    Ok(view)
}

/// Caught up: the group has settled this member's partitions and each was read up to the
/// high watermark its last fetch saw.
fn caught_up(consumer: &Consumer) -> bool {
    !consumer.assignment_pending() && consumer.assignment().iter().all(|tp| {
        let end = consumer.high_watermark(&tp.topic, tp.partition);
        matches!((consumer.position(&tp.topic, tp.partition), end), (Some(p), Some(e)) if p >= e)
    })
}

/// The view: totals per customer and, per partition, the offset of the next record to
/// apply (the totals include every record below it).
#[derive(Debug, Default)]
struct View {
    next_offsets: BTreeMap<u32, i64>,
    /// Customer -> (orders, total cents).
    totals: BTreeMap<String, (u64, i64)>,
}

impl View {
    /// Applies one order. Idempotent: a record below its partition's offset is already
    /// in the totals and changes nothing. A record that is not an order (key with spaces,
    /// value not a number) is passed over with a warning, not retried forever.
    fn apply(&mut self, r: &ConsumerRecord) {
        let next = self.next_offsets.entry(r.partition).or_insert(0);
        if r.offset < *next {
            return;
        }
        *next = r.offset + 1;
        let key = utf8(&r.key).filter(|k| !k.is_empty() && !k.contains(char::is_whitespace));
        match (key, utf8(&r.value).and_then(|v| v.parse::<i64>().ok())) {
            (Some(customer), Some(cents)) => {
                let totals = self.totals.entry(customer.to_owned()).or_default();
                *totals = (totals.0 + 1, totals.1 + cents);
            }
            _ => eprintln!(
                "materialized_view: skipped a malformed record at {}:{}",
                r.partition, r.offset
            ),
        }
    }

    /// Reads a store file (`offset P NEXT` and `customer KEY ORDERS CENTS` lines); a
    /// missing file is an empty view.
    fn load(path: &Path) -> Result<View> {
        let mut view = View::default();
        let text = match fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(view),
            read => read?,
        };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            match line.split(' ').collect::<Vec<_>>()[..] {
                ["offset", p, next] => {
                    view.next_offsets.insert(p.parse()?, next.parse()?);
                }
                ["customer", key, orders, cents] => {
                    view.totals
                        .insert(key.to_owned(), (orders.parse()?, cents.parse()?));
                }
                _ => return Err(format!("{}: bad line {line:?}", path.display()).into()),
            }
        }
        Ok(view)
    }

    /// Writes the store atomically: a temporary file, fsync, rename over the store, fsync
    /// of the directory. A crash leaves either the old store or the new one, never a mix.
    fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut text = String::from("# materialized_view store\n");
        for (p, next) in &self.next_offsets {
            text += &format!("offset {p} {next}\n");
        }
        for (customer, (orders, cents)) in &self.totals {
            text += &format!("customer {customer} {orders} {cents}\n");
        }
        let tmp = with_suffix(path, ".tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(path)
    }

    /// The totals on stdout, one line per customer, sorted by name.
    fn print(&self) -> Result<()> {
        let mut out = std::io::stdout().lock();
        for (customer, (orders, cents)) in &self.totals {
            writeln!(out, "{customer} orders={orders} total_cents={cents}")?;
        }
        Ok(())
    }
}

/// Locks `STORE.lock` (held while the file is open: released on drop, also by a crash);
/// `None` if another process holds it.
fn try_lock(store: &Path) -> Result<Option<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(with_suffix(store, ".lock"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e.into()),
    }
}

/// Makes a rename in `path`'s directory durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

fn utf8(bytes: &Option<impl AsRef<[u8]>>) -> Option<&str> {
    std::str::from_utf8(bytes.as_ref()?.as_ref()).ok()
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// SplitMix64: a tiny deterministic generator (the same seed gives the same orders).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

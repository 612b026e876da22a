//! Process wiring for the `readmodel` binary: flags, storage, the feed links, gRPC servers,
//! graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tracing::info;
use txn_proto::pb::v1 as pb;
use txn_server::net::{AdminAuth, ClientTls};
use txn_server::serve::StatsService;
use txn_storage::SledStore;
use txn_types::types::{MAX_MESSAGE_BYTES, ParticipantId};

use crate::node::ReadModel;
use crate::service::ReadModelService;

#[derive(Debug, Parser)]
#[command(
    name = "readmodel",
    about = "A read model (CQRS): balances and statements built from every participant's change feed"
)]
pub struct Args {
    /// Threads of the async runtime (0 = one per core).
    #[arg(long, default_value_t = 0, env = "TXN_WORKER_THREADS")]
    pub worker_threads: usize,
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// Directory of the read model's own database.
    #[arg(long, default_value = "data/readmodel")]
    pub data_dir: PathBuf,
    /// A participant whose feed the view follows, as NAME=URL (repeat for each).
    #[arg(long = "participant", value_name = "NAME=URL", required = true)]
    pub participants: Vec<String>,
    /// The name this read model registers under at every feed (events are kept for it until
    /// it acknowledges them). Two read models need two names.
    #[arg(long, default_value = "readmodel")]
    pub consumer: String,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = txn_server::process::LogFormat::Text)]
    pub log_format: txn_server::process::LogFormat,
    #[command(flatten)]
    pub tls: txn_server::net::TlsArgs,
    #[command(flatten)]
    pub token: txn_server::net::TokenArgs,
}

/// Time allowed to open a connection to a participant.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client_tls = ClientTls::load(&args.tls)?;
    let server = args.tls.server()?;
    let auth = AdminAuth::new(args.token.load()?);
    ParticipantId::parse("--consumer", &args.consumer)?;
    let mut feeds = Vec::new();
    for entry in &args.participants {
        let (name, url) = entry
            .split_once('=')
            .with_context(|| format!("--participant {entry:?}: expected NAME=URL"))?;
        ParticipantId::parse("--participant NAME", name)?;
        if feeds.iter().any(|(n, _)| n == name) {
            bail!("--participant {name} is given twice");
        }
        let ch = client_tls
            .endpoint("--participant", url, CONNECT_TIMEOUT)?
            .connect_lazy();
        feeds.push((name.to_owned(), ch));
    }
    let store = SledStore::open(&args.data_dir)
        .with_context(|| format!("opening the database in {}", args.data_dir.display()))?;
    let store: Arc<SledStore> = Arc::new(store);
    let counted = store.clone();
    let node = ReadModel::open(store, feeds, args.consumer.clone())
        .await
        .context("recovering the view")?;
    node.start();

    let svc = ReadModelService::new(node.clone());
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::read_model_server::ReadModelServer<ReadModelService>>()
        .await;
    let listener = txn_server::listen(args.listen)
        .with_context(|| format!("binding {} (is the port already in use?)", args.listen))?;
    let local = listener.local_addr()?;
    info!(addr = %local, data_dir = %args.data_dir.display(), "read model listening");
    println!("readmodel listening on {local}");
    let stats = StatsService::new(
        Arc::new(pb::StatsResponse::default),
        // The view's records by prefix (see ARCHITECTURE.md's storage layout).
        Arc::new(move || {
            txn_server::serve::count_records(
                counted.as_ref(),
                &[b"o/", b"b/", b"v/", b"s/", b"h/", b"t/", b"tq/", b"m"],
            )
        }),
        auth.clone(),
    );
    let mut builder = server;
    let router = txn_server::serve::base(&mut builder, health_svc, stats, &[], auth.clone())?
        .add_service(
            pb::read_model_server::ReadModelServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::read_model_admin_server::ReadModelAdminServer::with_interceptor(svc, auth),
        );
    let served = txn_server::serve::serve(router, listener, node.fatal()).await;
    node.stop();
    served?;
    node.sync().await.context("final sync")?;
    Ok(())
}

use clap::Parser;

#[tokio::main]
async fn main() {
    txn_proto::process::init_tracing();
    let args = txn_participant::server::Args::parse();
    if let Err(e) = txn_participant::server::run(args).await {
        eprintln!("participant: {e:#}");
        std::process::exit(1);
    }
}

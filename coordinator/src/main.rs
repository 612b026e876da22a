use clap::Parser;

#[tokio::main]
async fn main() {
    txn_proto::process::init_tracing();
    let args = txn_coordinator::server::Args::parse();
    if let Err(e) = txn_coordinator::server::run(args).await {
        eprintln!("coordinator: {e:#}");
        std::process::exit(1);
    }
}

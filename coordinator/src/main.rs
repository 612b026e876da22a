use clap::Parser;

fn main() {
    let args = txn_coordinator::server::Args::parse();
    let otlp = args.otlp_endpoint.clone();
    txn_server::process::run_service(
        "coordinator",
        "txn-coordinator",
        args.worker_threads,
        args.log_format,
        otlp.as_deref(),
        || txn_coordinator::server::run(args),
    );
}

use clap::Parser;

fn main() {
    let args = txn_participant::server::Args::parse();
    let service = format!("txn-participant-{}", args.name);
    let otlp = args.otlp_endpoint.clone();
    txn_server::process::run_service(
        "participant",
        &service,
        args.worker_threads,
        args.log_format,
        otlp.as_deref(),
        || txn_participant::server::run(args),
    );
}

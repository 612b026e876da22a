use clap::Parser;

fn main() {
    let args = txn_readmodel::server::Args::parse();
    txn_server::process::run_service(
        "readmodel",
        "txn-readmodel",
        args.worker_threads,
        args.log_format,
        None,
        || txn_readmodel::server::run(args),
    );
}

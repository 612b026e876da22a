use clap::Parser;

fn main() {
    let args = txn_participant::server::Args::parse();
    txn_server::process::init_tracing(args.log_format);
    let runtime = match txn_server::process::runtime(args.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("participant: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(txn_participant::server::run(args)) {
        eprintln!("participant: {e:#}");
        std::process::exit(1);
    }
}

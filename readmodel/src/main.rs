use clap::Parser;

fn main() {
    let args = txn_readmodel::server::Args::parse();
    txn_server::process::init_tracing(args.log_format);
    let runtime = match txn_server::process::runtime(args.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("readmodel: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(txn_readmodel::server::run(args)) {
        eprintln!("readmodel: {e:#}");
        std::process::exit(1);
    }
}

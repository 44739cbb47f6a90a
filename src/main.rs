use clap::Parser;

fn main() {
    let cli = stigmer::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stigmer: error: could not start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(stigmer::cli::main(cli));
    // Leave at once: background tasks (pollers, timers) must not hold the process open.
    std::process::exit(code);
}

use clap::Parser;

fn main() {
    let cli = stigmer::cli::Cli::parse();
    if cli.only_prints() {
        // SAFETY: restores the default disposition of SIGPIPE before any thread starts; the
        // process then ends quietly when the reader of its output goes away.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    let telemetry = match stigmer::telemetry::Telemetry::init() {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("stigmer: error: {e:#}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stigmer: error: could not start the async runtime: {e}");
            telemetry.shutdown();
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(stigmer::cli::main(cli));
    // `exit` runs no destructors: the last spans leave now or never.
    telemetry.shutdown();
    // Leave at once: background tasks (pollers, timers) must not hold the process open.
    std::process::exit(code);
}

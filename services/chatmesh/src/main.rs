use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = chatmesh::Cli::parse();
    let traces = match cli.init_telemetry() {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("chatmesh: {e:#}");
            std::process::exit(2);
        }
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let (grace, delay) = (cli.shutdown_grace, cli.shutdown_delay);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!(?delay, ?grace, "shutting down");
        let _ = stop.send(true);
        // The last word, on a thread of its own: even if the runtime were wedged on a broken
        // connection, the process ends shortly after the delay and the grace time.
        std::thread::spawn(move || {
            std::thread::sleep(delay + grace + std::time::Duration::from_secs(2));
            eprintln!("chatmesh: still running {grace:?} after the shutdown signal; exiting");
            std::process::exit(1);
        });
    });
    let code = match chatmesh::run(cli, shutdown).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("chatmesh: {e:#}");
            1
        }
    };
    if let Some(traces) = traces {
        // The exporter blocks while it sends the last spans: not on a runtime worker.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
    // Not waiting for the runtime to wind down blocking tasks: the drain is over.
    std::process::exit(code)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

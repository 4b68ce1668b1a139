use super::*;

#[derive(Args)]
pub struct BrokerArgs {
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Listen on every interface instead of loopback only.
    #[arg(long)]
    pub public: bool,
}

pub fn run(args: BrokerArgs) -> anyhow::Result<ExitCode> {
    let BrokerArgs { port, public } = args;
    let _ = journal::init("info", LogTarget::Stderr);
    let ip = if public { [0, 0, 0, 0] } else { [127, 0, 0, 1] };
    crlm_mqtt::broker::start(std::net::SocketAddr::from((ip, port)))?;
    eprintln!("crlm broker: listening on port {port}; Ctrl-C stops it");
    let rt = runtime()?;
    rt.block_on(wait_for_signal());
    Ok(ExitCode::SUCCESS)
}

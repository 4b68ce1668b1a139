use super::*;

#[derive(Subcommand)]
pub enum ConfigAction {
    /// Validate a configuration file (with CRLM_* environment overrides applied).
    Check { file: PathBuf },
    /// Print the annotated default configuration.
    Default,
}

pub fn run(action: ConfigAction) -> anyhow::Result<ExitCode> {
    match action {
        ConfigAction::Default => {
            print!("{}", crlm_config::DEFAULT_TOML);
            Ok(ExitCode::SUCCESS)
        }
        ConfigAction::Check { file } => match load_config(Some(&file)) {
            Ok(cfg) => {
                println!("{}: valid", file.display());
                println!("  share.path = {}", cfg.share.path.display());
                println!("  state.path = {}", cfg.state.path.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(code) => Ok(code),
        },
    }
}

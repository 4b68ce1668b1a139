use super::*;

#[derive(Subcommand)]
pub enum DisplayAction {
    /// Render one screen to a PNG file.
    Render {
        #[arg(long, value_enum)]
        screen: ScreenArg,
        /// Panel state as JSON (see docs/DISPLAY.md); or --example.
        #[arg(long, conflicts_with = "example")]
        state: Option<PathBuf>,
        /// Use the built-in example state.
        #[arg(long)]
        example: bool,
        #[arg(long)]
        out: PathBuf,
        /// WIDTHxHEIGHT.
        #[arg(long, default_value = "480x320")]
        size: String,
        /// open, or blinded (the study default: never a risk or group).
        #[arg(long, value_enum, default_value_t = ModeArg::Blinded)]
        mode: ModeArg,
    },
}

pub fn run(action: DisplayAction) -> anyhow::Result<ExitCode> {
    match action {
        DisplayAction::Render { screen, state, example, out, size, mode } => {
            use crlm_panel::state::{PanelState, ResultMode};
            let screen = screen.screen();
            let size = crlm_config::parse_size(&size)?;
            let mode = mode.mode();
            let st: PanelState = match (state, example) {
                (Some(p), _) => {
                    serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
                        .with_context(|| format!("{} is not a panel state (see docs/DISPLAY.md)", p.display()))?
                }
                (None, true) => PanelState::example(),
                (None, false) => anyhow::bail!("give --state FILE or --example"),
            };
            let png = crlm_panel::task::render_png(screen, &st, mode, size)?;
            std::fs::write(&out, png).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "{} ({}x{}, {}) -> {}",
                screen.name(),
                size.width,
                size.height,
                if mode == ResultMode::Open { "open" } else { "blinded" },
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The panel's screens.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScreenArg {
    Status,
    Ingest,
    Processing,
    Result,
    Problem,
}

impl ScreenArg {
    fn screen(self) -> crlm_panel::ui::Screen {
        use crlm_panel::ui::Screen;
        match self {
            ScreenArg::Status => Screen::Status,
            ScreenArg::Ingest => Screen::Ingest,
            ScreenArg::Processing => Screen::Processing,
            ScreenArg::Result => Screen::Result,
            ScreenArg::Problem => Screen::Problem,
        }
    }
}

/// `display.mode` on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    Open,
    Blinded,
}

impl ModeArg {
    fn mode(self) -> crlm_config::ResultMode {
        match self {
            ModeArg::Open => crlm_config::ResultMode::Open,
            ModeArg::Blinded => crlm_config::ResultMode::Blinded,
        }
    }
}

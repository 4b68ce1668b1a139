use super::*;

#[derive(Args)]
pub struct InspectArgs {
    pub path: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let InspectArgs { path, json } = args;
    let items = crlm_ingest::inspect::inspect(&path, &crlm_models::limits::Limits::default())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        for i in &items {
            println!("{}\t{}\t{}", i.kind.as_str(), i.verdict, i.path);
            for p in &i.problems {
                println!("\t  problem: {p}");
            }
        }
    }
    let any_rejected = items.iter().any(|i| i.verdict != "usable");
    Ok(if any_rejected { ExitCode::from(3) } else { ExitCode::SUCCESS })
}

use super::*;

#[derive(Subcommand)]
pub enum CtAction {
    /// Decode a CT series into a Hounsfield-unit volume and write NIfTI-1 (.nii or .nii.gz).
    Volume {
        /// Folder holding the series (other files are ignored).
        series_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// SeriesInstanceUID, when the folder holds several CT series.
        #[arg(long)]
        series: Option<String>,
        /// Print the geometry report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(action: CtAction, cfg: &Config) -> anyhow::Result<ExitCode> {
    match action {
        CtAction::Volume { series_dir, out, series, json } => {
            // The CT images under the folder as `crlm predict` and the service find them (beneath
            // the folder through cap-std, links refused, recognised by content with the configured
            // limits), grouped by the service's series key (blank UIDs fall back to number,
            // description, size and folder).
            let files = crlm_predict::gather(&series_dir, cfg)?;
            let mut groups: std::collections::BTreeMap<String, Vec<(PathBuf, crlm_models::dicom::DicomHeader)>> =
                Default::default();
            for (path, h) in files.ct_images {
                let folder = path.parent().map(|p| p.display().to_string()).unwrap_or_default();
                groups.entry(crlm_ingest::series::series_key(&h, &folder)).or_default().push((path, h));
            }
            let members = match (series, groups.len()) {
                (_, 0) => anyhow::bail!(
                    "no usable CT images in {} (see `crlm inspect {}`)",
                    series_dir.display(),
                    series_dir.display()
                ),
                (Some(uid), _) => {
                    groups.remove(&uid).with_context(|| format!("no series {uid} in {}", series_dir.display()))?
                }
                (None, 1) => groups.into_values().next().unwrap_or_default(),
                (None, _) => {
                    let list: Vec<String> = groups.iter().map(|(k, v)| format!("  {k} ({} images)", v.len())).collect();
                    anyhow::bail!(
                        "{} holds several CT series; choose one with --series:\n{}",
                        series_dir.display(),
                        list.join("\n")
                    );
                }
            };
            let (files, headers): (Vec<PathBuf>, Vec<_>) = members.into_iter().unzip();
            let vol = crlm_models::ct::volume::load_series_with_headers(&files, &headers, &cfg.limits)?;
            crlm_models::ct::write_nifti(&vol, &out)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "out": out, "dims": [vol.columns, vol.rows, vol.slices], "spacing_mm": vol.spacing,
                        "origin_lps": vol.origin, "direction_lps": vol.direction, "report": vol.report,
                    }))?
                );
            } else {
                println!(
                    "{}: {}x{}x{} voxels, spacing {:.3} x {:.3} x {:.3} mm, origin (LPS) {:.2}, {:.2}, {:.2}",
                    out.display(),
                    vol.columns,
                    vol.rows,
                    vol.slices,
                    vol.spacing[0],
                    vol.spacing[1],
                    vol.spacing[2],
                    vol.origin[0],
                    vol.origin[1],
                    vol.origin[2]
                );
                for w in &vol.report.warnings {
                    println!("  warning: {w}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

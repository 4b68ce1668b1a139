use super::*;

#[derive(Subcommand)]
pub enum ModelAction {
    /// Name, version, hash, signer, inputs and allowed modalities of a package (verified first).
    Info {
        /// Package folder or .tar (default: the configured model, else the built-in demo).
        package: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Also build the network on this backend and show what runs it (provider, precision).
        #[arg(long)]
        backend: Option<BackendKind>,
    },
    /// Write CRLM-Net's parts as ONNX graphs (opset 17) from a package's weights: a new package
    /// folder OUT with the graphs and an [onnx] table, signed with KEY.
    ExportOnnx {
        package: Option<PathBuf>,
        #[command(flatten)]
        new: NewPackage,
    },
    /// INT8 (QDQ) graphs calibrated on the case folders in CALIBRATION: a new package folder OUT,
    /// signed with KEY. The CT and tile encoders become INT8; the rest stays fp32.
    Quantize {
        package: Option<PathBuf>,
        /// A folder of case folders (as `crlm predict` reads them), e.g. from `crlm synth patient`.
        #[arg(long)]
        calibration: PathBuf,
        #[command(flatten)]
        new: NewPackage,
        /// Convolutions to keep in fp32, comma-separated (ct.conv.conv1, ..., slide.conv.conv3).
        #[arg(long, default_value = "")]
        keep_fp32: String,
        /// Each activation's int8 range covers this percentile of |x| over the calibration cases (100: the
        /// maximum, the best on the demo model: docs/BACKENDS.md).
        #[arg(long, default_value_t = 100.0)]
        percentile: f64,
    },
    /// Check every hash, the signature and the signer's trust; exit 1 naming the file that fails.
    Verify {
        package: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write MANIFEST.sha256 and SIGNATURE.json for a package folder.
    Sign {
        package: PathBuf,
        /// Signing key (hex seed file); see `crlm model keygen`.
        #[arg(long)]
        key: PathBuf,
        /// Create the key first when the file does not exist.
        #[arg(long)]
        generate_key: bool,
    },
    /// Create an Ed25519 key pair: KEY (private, mode 0600) and the public key beside it (extension .pub).
    Keygen { key: PathBuf },
    /// Write a verified package folder as a reproducible .tar.
    Pack {
        package: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Run two packages (or one package on two backends) on the same case folders and report how
    /// far their risks differ and how many risk groups change (e.g. INT8 against fp32).
    Compare {
        a: PathBuf,
        b: PathBuf,
        /// A folder of case folders.
        #[arg(long)]
        cases: PathBuf,
        #[arg(long, default_value = "candle")]
        backend_a: BackendKind,
        #[arg(long, default_value = "onnx")]
        backend_b: BackendKind,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Compare the package's network with its authors' own run (PyTorch) on the reference
    /// inputs and outputs of a safetensors file (keys in docs/MODEL.md); exit 1 beyond TOLERANCE.
    Parity {
        package: PathBuf,
        #[arg(long)]
        reference: PathBuf,
        #[arg(long, default_value = "onnx")]
        backend: BackendKind,
        /// Largest |difference| allowed on any output.
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f32,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Time the network on this machine: ms per CT volume, tiles per second for the tile encoder.
    Bench {
        package: Option<PathBuf>,
        #[arg(long, default_value_t = 256)]
        tiles: usize,
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        #[arg(long, default_value = "candle")]
        backend: BackendKind,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// The case folders directly inside `dir`, sorted (calibration and comparison sets).
fn case_folders(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)?.flatten().map(|e| e.path()).filter(|d| d.is_dir()).collect();
    dirs.sort();
    Ok(dirs)
}

/// The package's ONNX graphs and their declared interfaces (unreadable ones are left out).
fn onnx_graphs(p: &crlm_models::package::ModelPackage) -> Vec<(&'static str, String, crlm_models::onnx::GraphIo)> {
    let Some(parts) = p.spec.graph_parts() else { return Vec::new() };
    parts
        .present()
        .into_iter()
        .filter_map(|(part, g)| {
            let io = crlm_models::onnx::GraphIo::read(&g.file, p.file(&g.file)?).ok()?;
            Some((part, g.file.clone(), io))
        })
        .collect()
}

/// Where a command writes a new package, and what signs it.
#[derive(Args)]
pub struct NewPackage {
    /// The new package folder (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Signing key for the new package (the demo's: models/packages/demo.key).
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(action: ModelAction) -> anyhow::Result<ExitCode> {
    use crlm_models::package::{self, ModelPackage, TrustStore, signing};
    let load = |pkg: Option<PathBuf>, config: Option<PathBuf>| -> anyhow::Result<Result<ModelPackage, ExitCode>> {
        let cfg = match load_config(config_path(config).as_deref()) {
            Ok(c) => c,
            Err(code) => return Ok(Err(code)),
        };
        let trust = TrustStore::from_files(&cfg.model.trusted_keys)?;
        let source = crlm_predict::package_source(&cfg, pkg.as_deref());
        Ok(ModelPackage::load(&source, &trust).map_err(|e| {
            eprintln!("crlm: {}: REFUSED: {e}", source.describe());
            ExitCode::FAILURE
        }))
    };
    match action {
        ModelAction::Verify { package, config } => match load(package, config)? {
            Ok(p) => {
                // The graphs must also fit together and fit the package (no ONNX Runtime needed).
                let wiring = match crlm_models::backend::wiring::wire_package(&p).transpose() {
                    Ok(w) => w,
                    Err(e) => {
                        eprintln!("crlm: {}: REFUSED: the ONNX parts do not fit: {e}", p.source.describe());
                        return Ok(ExitCode::FAILURE);
                    }
                };
                println!(
                    "{}: OK ({} files, sha256 {}, signed by {} [{:?}], format {})",
                    p.source.describe(),
                    p.files.len(),
                    p.sha256,
                    p.signer_key_id,
                    p.trust,
                    p.spec.format
                );
                for line in wiring.iter().flat_map(|w| w.describe()) {
                    println!("  {line}");
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(code) => Ok(code),
        },
        ModelAction::Info { package, config, json, backend } => match load(package.clone(), config.clone())? {
            Ok(p) => {
                let s = &p.spec;
                let running = match backend {
                    Some(kind) => {
                        let cfg = match load_config(config_path(config).as_deref()) {
                            Ok(c) => c,
                            Err(code) => return Ok(code),
                        };
                        let m = crlm_predict::load_model_on(&cfg, package.as_deref(), kind)?;
                        Some(m.backend_info())
                    }
                    None => None,
                };
                let graphs = onnx_graphs(&p);
                let doc = serde_json::json!({
                    "source": p.source.describe(), "sha256": p.sha256, "signer_key_id": p.signer_key_id,
                    "trust": p.trust, "spec": s,
                    "backends": {
                        "candle": p.weights().is_some(),
                        "onnx": s.graph_parts().map(|g| g.precisions()),
                    },
                    "onnx_graphs": graphs.iter().map(|(part, file, io)| serde_json::json!({
                        "part": part, "file": file, "opset": io.opset,
                        "inputs": io.inputs.iter().map(|(n, _, d)| (n.clone(), d.iter().map(|x| x.to_string()).collect::<Vec<_>>())).collect::<Vec<_>>(),
                        "outputs": io.outputs.iter().map(|(n, _, d)| (n.clone(), d.iter().map(|x| x.to_string()).collect::<Vec<_>>())).collect::<Vec<_>>(),
                        "quantize_linear": io.count("QuantizeLinear"),
                    })).collect::<Vec<_>>(),
                    "running": running,
                    "notice": s.demo.then_some(crlm_predict::DEMO_NOTICE),
                });
                if json {
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                } else {
                    if s.demo {
                        println!("*** {} ***", crlm_predict::DEMO_NOTICE);
                    }
                    println!("{} {} ({})", s.name, s.version, s.architecture);
                    println!("  sha256: {}", p.sha256);
                    println!("  signed by: {} ({:?})", p.signer_key_id, p.trust);
                    println!("  intended use: {}", s.intended_use);
                    let mut forms = Vec::new();
                    if p.weights().is_some() {
                        forms.push("candle (safetensors weights)".to_string());
                    }
                    if let Some(g) = s.graph_parts() {
                        let prec: Vec<String> = g.precisions().into_iter().map(|(k, v)| format!("{k} {v}")).collect();
                        forms.push(format!("onnx ({} graphs: {})", graphs.len(), prec.join(", ")));
                    }
                    println!("  backends: {}", forms.join(", "));
                    for (part, file, io) in &graphs {
                        let show = |v: &[(String, i32, Vec<crlm_models::onnx::Dim>)]| {
                            v.iter()
                                .map(|(n, _, d)| {
                                    format!("{n} [{}]", d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))
                                })
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
                        println!(
                            "    {part}: {file}, opset {}, {} -> {}{}",
                            io.opset,
                            show(&io.inputs),
                            show(&io.outputs),
                            match io.count("QuantizeLinear") {
                                0 => String::new(),
                                q => format!(" ({q} QuantizeLinear)"),
                            }
                        );
                    }
                    if let Some(r) = &running {
                        println!(
                            "  running on: {} / {} ({}){}",
                            r.name,
                            r.provider,
                            r.precision,
                            r.runtime.as_ref().map(|v| format!(", ONNX Runtime {v}")).unwrap_or_default()
                        );
                    }
                    let subsets: Vec<String> = s
                        .modalities
                        .allowed
                        .iter()
                        .map(|m| m.iter().map(|x| x.name()).collect::<Vec<_>>().join("+"))
                        .collect();
                    println!("  allowed modality subsets: {}", subsets.join(", "));
                    println!(
                        "  CT: {:?} voxels of {:?} mm, HU window {:?}",
                        s.ct.shape, s.ct.spacing_mm, s.ct.hu_window
                    );
                    println!(
                        "  slide: {} px tiles at {} um/px, up to {} tiles ({:?})",
                        s.slide.tile_px, s.slide.microns_per_pixel, s.slide.max_tiles, s.slide.sampling
                    );
                    println!("  clinical: {} features, {} columns", s.clinical.features.len(), s.clinical.width());
                    println!("  decision threshold: {}; calibration: {:?}", s.decision.threshold, s.calibration);
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(code) => Ok(code),
        },
        ModelAction::Keygen { key } => {
            let public = signing::write_new_key(&key)?;
            println!(
                "{}: private key (keep it secret); {}: public key {}",
                key.display(),
                key.with_extension("pub").display(),
                signing::key_id(&public)
            );
            Ok(ExitCode::SUCCESS)
        }
        ModelAction::Sign { package, key, generate_key } => {
            if generate_key && !key.exists() {
                signing::write_new_key(&key)?;
                println!("created key {} and {}", key.display(), key.with_extension("pub").display());
            }
            let k = signing::read_signing_key(&key)?;
            let sha = package::sign_dir(&package, &k)?;
            println!("{}: signed by {}; package sha256 {sha}", package.display(), signing::key_id(&k.verifying_key()));
            Ok(ExitCode::SUCCESS)
        }
        ModelAction::Pack { package, out } => match load(Some(package), None)? {
            Ok(p) => {
                // The files as they are on disk (signature included), after they verified.
                package::pack_tar(&package::read_files(&p.source)?, &out)?;
                println!("{}: package sha256 {}", out.display(), p.sha256);
                Ok(ExitCode::SUCCESS)
            }
            Err(code) => Ok(code),
        },
        ModelAction::Parity { package, reference, backend, tolerance, config } => {
            let cfg = match load_config(config_path(config).as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let model = crlm_predict::load_model_on(&cfg, Some(&package), backend)?;
            let p = crlm_predict::parity(&model, &reference)?;
            let worst = p.max_abs_diff.values().copied().fold(0f32, f32::max);
            let info = model.backend_info();
            println!(
                "{}: {} case(s) on {} / {} ({}); largest |crlm - reference|:",
                package.display(),
                p.cases,
                info.name,
                info.provider,
                info.precision
            );
            for (k, v) in &p.max_abs_diff {
                println!("  {k}: {v:e}");
            }
            if worst > tolerance {
                println!("PARITY FAILED: {worst:e} > {tolerance:e}");
                return Ok(ExitCode::FAILURE);
            }
            println!("parity OK (tolerance {tolerance:e})");
            Ok(ExitCode::SUCCESS)
        }
        ModelAction::Bench { package, tiles, repeat, backend, config } => {
            let cfg = match load_config(config_path(config).as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let model = crlm_predict::load_model_on(&cfg, package.as_deref(), backend)?;
            print!("{}", crlm_predict::bench(&model, tiles, repeat)?);
            Ok(ExitCode::SUCCESS)
        }
        ModelAction::Compare { a, b, cases, backend_a, backend_b, config, json } => {
            let cfg = match load_config(config_path(config).as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let ma = crlm_predict::load_model_on(&cfg, Some(&a), backend_a)?;
            let mb = crlm_predict::load_model_on(&cfg, Some(&b), backend_b)?;
            let dirs = case_folders(&cases)?;
            let c = crlm_predict::compare(&ma, &mb, &dirs, &cfg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                let show = |v: &crlm_predict::ComparedModel| {
                    let m = &v.identity;
                    format!("{} on {}/{} ({})", m.sha256.get(..12).unwrap_or("?"), m.backend, m.device, m.precision)
                };
                println!("A: {}\nB: {}", show(&c.a), show(&c.b));
                println!(
                    "{} cases: risk_2y |A-B| max {:.6}, mean {:.6}; hazards and attention |A-B| max {:.6}; risk group changed in {} ({:.1} %)",
                    c.cases,
                    c.risk_abs_diff_max,
                    c.risk_abs_diff_mean,
                    c.other_abs_diff_max,
                    c.group_changes,
                    100.0 * c.group_change_fraction
                );
                for (case, why) in &c.skipped {
                    println!("  skipped {case}: {why}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelAction::ExportOnnx { package, new: NewPackage { out, key, config } } => match load(package, config)? {
            Ok(p) => {
                let weights = p.weights().ok_or_else(|| anyhow::anyhow!("the package carries no weights to export"))?;
                let (onnx, graphs) = crlm_models::onnx::export::export(&p.spec, weights, None)?;
                let k = signing::read_signing_key(&key)?;
                let sha = crlm_models::onnx::export::write_with_onnx(&p, &out, &onnx, &graphs, &k)?;
                for g in &graphs {
                    println!("  {}: {} ({} bytes)", g.part, g.spec.file, g.bytes.len());
                }
                println!("{}: package with ONNX graphs (opset 17), sha256 {sha}", out.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(code) => Ok(code),
        },
        ModelAction::Quantize { package, calibration, new: NewPackage { out, key, config }, keep_fp32, percentile } => {
            let cfg = match load_config(config_path(config.clone()).as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let p = match load(package, config)? {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            // Never a different network under the same name: only crlm's own graphs are rebuilt.
            crlm_models::onnx::quantize::check_rebuildable(&p)?;
            let weights =
                p.weights().ok_or_else(|| anyhow::anyhow!("the package carries no fp32 weights to calibrate"))?;
            let dirs = case_folders(&calibration)?;
            let mut cases = Vec::new();
            for d in &dirs {
                match crlm_predict::prepare_case(d, &p.spec, &cfg) {
                    Ok(prepared) => cases.push(prepared.inputs),
                    Err(e) => eprintln!("calibration: {}: skipped: {e}", d.display()),
                }
            }
            let mut ranges = crlm_models::onnx::quantize::calibrate(&p, &cases, percentile)?;
            const CONVS: [&str; 6] = [
                "ct.conv.conv1",
                "ct.conv.conv2",
                "ct.conv.conv3",
                "slide.conv.conv1",
                "slide.conv.conv2",
                "slide.conv.conv3",
            ];
            for name in keep_fp32.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                anyhow::ensure!(CONVS.contains(&name), "--keep-fp32 {name}: not one of {}", CONVS.join(", "));
                ranges.keep_fp32.push(name.to_string());
            }
            let (onnx, graphs) = crlm_models::onnx::export::export(&p.spec, weights, Some(&ranges))?;
            let k = signing::read_signing_key(&key)?;
            let sha = crlm_models::onnx::export::write_with_onnx(&p, &out, &onnx, &graphs, &k)?;
            println!("calibrated on {} case(s): {}", cases.len(), ranges.describe());
            println!("  CT encoder |x| ranges per conv input {:?}, output {:?}", ranges.ct.input, ranges.ct.output);
            println!(
                "  tile encoder |x| ranges per conv input {:?}, output {:?}",
                ranges.tiles.input, ranges.tiles.output
            );
            println!("{}: INT8 (QDQ) package, sha256 {sha}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

use super::*;

#[derive(Subcommand)]
pub enum SynthAction {
    /// A sample case folder: contrast CT series, pyramidal slide, clinical file.
    Case {
        dir: PathBuf,
        #[arg(long, default_value = "SYNTH-0001")]
        patient_id: String,
        #[arg(long, default_value_t = 24)]
        slices: u32,
        /// Also write a DICOM SEG of the phantom's liver (the CT crop is centred on it).
        #[arg(long)]
        segmentation: bool,
    },
    /// A patient of the synthetic cohort (docs/MODEL.md) as a case folder.
    Patient {
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 0)]
        index: u32,
        /// Latent risk scores (CT, pathology, clinical); `high` = 1.5 each, `low` = -1.5 each.
        #[arg(long)]
        risk: Option<String>,
        /// Leave out modalities: any of ct, slide, clinical (comma-separated).
        #[arg(long, default_value = "", value_parser = ModalityList::parse)]
        without: ModalityList,
    },
    /// The synthetic training cohort as model inputs (safetensors) for models/reference/train_demo.py.
    Cohort {
        #[arg(long)]
        out: PathBuf,
        /// model.toml whose input spec (CT grid, tiles, clinical encoding) to prepare for.
        #[arg(long, default_value = "models/packages/demo/model.toml")]
        spec: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 1300)]
        patients: u32,
    },
    /// A CT series of the given size (benchmarks): `--size 512 --slices 300`.
    Ct {
        dir: PathBuf,
        #[arg(long, default_value_t = 300)]
        slices: u32,
        #[arg(long, default_value_t = 512)]
        size: u16,
        /// Transfer syntax: explicit or implicit VR little endian.
        #[arg(long, value_enum, default_value_t = SyntaxArg::Explicit)]
        syntax: SyntaxArg,
    },
    /// A pyramidal JPEG slide (Aperio SVS layout) of the given size (benchmarks):
    /// `--width 40960 --height 30720`.
    Slide {
        file: PathBuf,
        #[arg(long, default_value_t = 40960)]
        width: u32,
        #[arg(long, default_value_t = 30720)]
        height: u32,
        /// Microns per pixel of level 0.
        #[arg(long, default_value_t = 0.5)]
        mpp: f64,
        #[arg(long, default_value_t = 5)]
        levels: u32,
    },
    /// A Hamamatsu VMS slide in DIR (`slide.vms` and the JPEG files it names: image, map and
    /// macro), the layout OpenSlide reads; only OpenSlide reads it, so crlm does through it.
    VmsSlide {
        dir: PathBuf,
        #[arg(long, default_value_t = 4096)]
        width: u32,
        #[arg(long, default_value_t = 3072)]
        height: u32,
    },
    /// A 3DHISTECH MRXS slide in DIR (`slide.mrxs` and the folder `slide/` with Slidedat.ini,
    /// Index.dat and Data0000.dat), the layout OpenSlide reads; only OpenSlide reads it.
    MrxsSlide {
        dir: PathBuf,
        #[arg(long, default_value_t = 4096)]
        width: u32,
        #[arg(long, default_value_t = 3072)]
        height: u32,
        #[arg(long, default_value_t = 4)]
        levels: u32,
    },
    /// A DICOM whole-slide series (one file per level and a label) in DIR: `--sparse` writes
    /// TILED_SPARSE frames, `--split` level 0 as a two-file concatenation, `--uncompressed` RGB frames.
    DicomSlide {
        dir: PathBuf,
        #[arg(long, default_value_t = 4096)]
        width: u32,
        #[arg(long, default_value_t = 3072)]
        height: u32,
        #[arg(long, default_value_t = 3)]
        levels: u32,
        #[arg(long, default_value_t = 256)]
        tile: u32,
        #[arg(long)]
        sparse: bool,
        #[arg(long)]
        split: bool,
        #[arg(long)]
        uncompressed: bool,
    },
}

pub fn run(action: SynthAction) -> anyhow::Result<ExitCode> {
    match action {
        SynthAction::Case { dir, patient_id, slices, segmentation } => {
            let case = crlm_models::synth::SampleCase {
                slices,
                with_segmentation: segmentation,
                ..crlm_models::synth::SampleCase::new(&patient_id)
            };
            let files = crlm_models::synth::write_sample_case(&dir, &case)?;
            println!("{}: {} files", dir.display(), files.len());
            Ok(ExitCode::SUCCESS)
        }
        SynthAction::Patient { dir, seed, index, risk, without } => {
            let z = match risk.as_deref() {
                None => None,
                Some("high") => Some([1.5; 3]),
                Some("low") => Some([-1.5; 3]),
                Some(list) => {
                    let v: Vec<f64> = list.split(',').map(|x| x.trim().parse::<f64>()).collect::<Result<_, _>>()?;
                    Some(
                        <[f64; 3]>::try_from(v)
                            .map_err(|_| anyhow::anyhow!("--risk wants high, low or three numbers"))?,
                    )
                }
            };
            let mut parts = crlm_models::cohort::CaseParts::default();
            for w in without.0 {
                match w {
                    ModalityArg::Ct => parts.ct = false,
                    ModalityArg::Slide => parts.slide = false,
                    ModalityArg::Clinical => parts.clinical = false,
                }
            }
            let p = crlm_models::cohort::patient(seed, index, z);
            let files = crlm_models::cohort::write_case(&dir, &p, parts)?;
            println!("{}: {} files; true 2-year risk {:.3}", dir.display(), files.len(), p.true_risk_2y);
            Ok(ExitCode::SUCCESS)
        }
        SynthAction::Cohort { out, spec, seed, patients } => {
            let cfg = Config::default();
            init_logging(&cfg);
            let spec =
                crlm_models::package::parse_spec(&std::fs::read(&spec).with_context(|| spec.display().to_string())?)?;
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let t = std::time::Instant::now();
            crate::cohort_export::export(
                &spec,
                &cfg,
                &crate::cohort_export::CohortOptions { seed, patients, threads },
                &out,
            )?;
            println!("{}: {patients} patients in {:.0} s", out.display(), t.elapsed().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
        SynthAction::Slide { file, width, height, mpp, levels } => {
            let spec = crlm_models::slide::SlideSpec {
                microns_per_pixel: mpp,
                levels,
                label_text: None,
                ..crlm_models::slide::SlideSpec::small(width, height)
            };
            crlm_models::slide::write_pyramidal_tiff(&file, &spec)?;
            println!("{}: {width} x {height} px at {mpp} um/px, {levels} levels", file.display());
            Ok(ExitCode::SUCCESS)
        }
        SynthAction::VmsSlide { dir, width, height } => {
            let spec = crlm_models::slide::SlideSpec::small(width, height);
            let files = crlm_models::slide::vms::write_vms(&dir, "slide", &spec)?;
            println!("{}: {width} x {height} px, {} files (index slide.vms)", dir.display(), files.len());
            Ok(ExitCode::SUCCESS)
        }
        SynthAction::MrxsSlide { dir, width, height, levels } => {
            let spec = crlm_models::slide::SlideSpec { levels, ..crlm_models::slide::SlideSpec::small(width, height) };
            let files = crlm_models::slide::mrxs::write_mrxs(&dir, "slide", &spec)?;
            println!("{}: {width} x {height} px, {levels} levels, {} files (slide.mrxs)", dir.display(), files.len());
            Ok(ExitCode::SUCCESS)
        }
        SynthAction::DicomSlide { dir, width, height, levels, tile, sparse, split, uncompressed } => {
            let slide = crlm_models::slide::SlideSpec {
                levels,
                tile,
                uncompressed,
                ..crlm_models::slide::SlideSpec::small(width, height)
            };
            let mut spec = crlm_models::slide::DicomSlideSpec::new("synth-dicom-slide", slide);
            spec.sparse = sparse;
            spec.split_level0 = split;
            let files = crlm_models::slide::write_dicom_slide(&dir, &spec)?;
            println!("{}: {width} x {height} px, {levels} levels, {} files", dir.display(), files.len());
            Ok(ExitCode::SUCCESS)
        }
        SynthAction::Ct { dir, slices, size, syntax } => {
            use crlm_models::dicom::{CtSeriesSpec, ts};
            let mut spec =
                CtSeriesSpec::axial("SYNTH-CT", "1.2.826.0.1.3680043.10.1", "1.2.826.0.1.3680043.10.1.1", slices);
            spec.rows = size;
            spec.columns = size;
            spec.hu = std::sync::Arc::new(crlm_models::dicom::writer::texture_hu);
            spec.transfer_syntax = match syntax {
                SyntaxArg::Explicit => ts::EXPLICIT_VR_LE,
                SyntaxArg::Implicit => ts::IMPLICIT_VR_LE,
            };
            let files = crlm_models::dicom::write_ct_series(&dir, &spec)?;
            println!("{}: {} slices of {size}x{size}", dir.display(), files.len());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// DICOM transfer syntax of a written series.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SyntaxArg {
    Explicit,
    Implicit,
}

/// A modality of a case.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModalityArg {
    Ct,
    Slide,
    Clinical,
}

/// A comma-separated list of modalities (empty: none).
#[derive(Clone, Debug)]
pub struct ModalityList(pub Vec<ModalityArg>);

impl ModalityList {
    fn parse(s: &str) -> Result<ModalityList, String> {
        s.split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(|w| {
                ModalityArg::from_str(w, true).map_err(|_| format!("unknown modality `{w}` (ct, slide, clinical)"))
            })
            .collect::<Result<_, _>>()
            .map(ModalityList)
    }
}

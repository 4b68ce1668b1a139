//! The model's error type, shared by the backends and inference (below both, so neither depends
//! on the other for it).

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model package {0}")]
    Package(#[from] crate::package::PackageError),
    #[error("the package's clinical encoding does not fit schema v1: {0}")]
    Encoding(String),
    #[error("the weights do not fit CRLM-Net v1 as model.toml sizes it: {0}")]
    Weights(String),
    #[error("the package's time axis cannot give the risk at the study horizon: {0}")]
    Horizon(String),
    #[error("backend: {0}")]
    Backend(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("{0}")]
    Input(String),
    #[error("the model package does not allow a prediction from {present}; it allows {allowed} ({why})")]
    ModalitiesNotAllowed { present: String, allowed: String, why: String },
}

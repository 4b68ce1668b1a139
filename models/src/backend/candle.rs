//! The candle backend: CRLM-Net from the package's safetensors weights, on the CPU.

use super::{Backend, BackendInfo, RawInput};
use crate::error::ModelError;
use crate::net::{CrlmNet, NetInput, NetOutput};
use crate::package::ModelPackage;
use candle_core::{Device, Tensor};

pub struct CandleBackend {
    net: CrlmNet,
    /// CT `[Z, Y, X]`, tile edge, clinical width, embedding width.
    ct_shape: [usize; 3],
    tile_px: usize,
    clinical_width: usize,
    embed: usize,
}

fn err(e: candle_core::Error) -> ModelError {
    ModelError::Inference(e.to_string())
}

impl CandleBackend {
    pub fn new(package: &ModelPackage) -> Result<Self, ModelError> {
        let spec = &package.spec;
        let file = spec.weights.as_ref().map(|w| w.file.as_str()).ok_or_else(|| {
            ModelError::Backend(
                "the package carries no safetensors weights, only ONNX graphs: use the onnx backend".into(),
            )
        })?;
        let weights = package.read(file)?;
        let network = spec.network.as_ref().ok_or_else(|| {
            ModelError::Backend(format!(
                "a format {} package is ONNX parts, not CRLM-Net: use the onnx backend (model.backend = \"onnx\")",
                spec.format
            ))
        })?;
        let width = spec.clinical.width();
        let net = CrlmNet::from_safetensors(&weights, network, width, &Device::Cpu)
            .map_err(|e| ModelError::Weights(format!("{file}: {e}")))?;
        let [x, y, z] = spec.ct.shape;
        Ok(CandleBackend {
            net,
            ct_shape: [z, y, x],
            tile_px: spec.slide.tile_px as usize,
            clinical_width: width,
            embed: network.embed,
        })
    }

    pub fn net(&self) -> &CrlmNet {
        &self.net
    }

    /// candle tensors from raw inputs.
    pub fn tensors(&self, input: &RawInput) -> Result<NetInput, ModelError> {
        let dev = self.net.device();
        let e = self.embed;
        Ok(NetInput {
            ct: input
                .ct
                .map(|c| Tensor::from_slice(c, (self.ct_shape[0], self.ct_shape[1], self.ct_shape[2]), dev))
                .transpose()
                .map_err(err)?,
            tile_embeddings: input
                .tile_embeddings
                .map(|(h, n)| Tensor::from_slice(h, (n, e), dev))
                .transpose()
                .map_err(err)?,
            clinical: input
                .clinical
                .map(|c| Tensor::from_slice(c, (1, self.clinical_width), dev))
                .transpose()
                .map_err(err)?,
        })
    }
}

impl Backend for CandleBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "candle".into(),
            provider: "cpu".into(),
            precision: "fp32".into(),
            runtime: None,
            parts: Default::default(),
        }
    }

    fn forward(&self, input: &RawInput) -> Result<NetOutput, ModelError> {
        self.net.forward(&self.tensors(input)?).map_err(err)
    }

    fn embed_tiles(&self, tiles: &[f32], n: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.tile_px;
        if tiles.len() != n * 3 * t * t {
            return Err(ModelError::Input(format!("{} tile values for {n} tiles of {t} px", tiles.len())));
        }
        let x = Tensor::from_slice(tiles, (n, 3, t, t), self.net.device()).map_err(err)?;
        self.net.embed_tiles(&x).and_then(|e| e.flatten_all()?.to_vec1::<f32>()).map_err(err)
    }
}

//! CRLM-Net v1 in candle (docs/MODEL.md has the diagram and every tensor shape).
//!
//! - CT: a 2.5D encoder. One small 2D CNN shared by every axial slice, then attention over
//!   slices. candle has no conv3d; a 2.5D encoder is what ONNX/TensorRT also run fastest, and
//!   the slice attention says which levels the prediction rests on.
//! - Slide: a small tile CNN and gated attention MIL (Ilse et al. 2018) over all tiles of all
//!   slides of the case: a case embedding and one attention weight per tile.
//! - Clinical: an MLP over the package's encoding (values and missingness indicators).
//! - Fusion: a missing modality is replaced by its learned "missing" embedding and the presence
//!   mask is an input too; then an MLP to discrete-time hazards per 6-month interval.
//!
//! Parameter names equal the PyTorch twin's `state_dict` keys (models/reference/crlm_net.py),
//! so the study team's safetensors load by name.

use crate::calibration::{ActivationRanges, ConvRanges};
use crate::package::spec::NetworkSpec;
use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder, conv2d, linear};

pub type Result<T> = std::result::Result<T, candle_core::Error>;

/// Three stride-2 3x3 convolutions with ReLU, then the spatial mean: [N, C, H, W] -> [N, c3].
struct ConvStack {
    convs: Vec<Conv2d>,
}

impl ConvStack {
    fn new(input: usize, channels: [usize; 3], vb: &VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig { padding: 1, stride: 2, ..Default::default() };
        let mut convs = Vec::new();
        let mut cin = input;
        for (i, c) in channels.into_iter().enumerate() {
            convs.push(conv2d(cin, c, 3, cfg, vb.pp(format!("conv{}", i + 1)))?);
            cin = c;
        }
        Ok(ConvStack { convs })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for c in &self.convs {
            x = c.forward(&x)?.relu()?;
        }
        x.mean((2, 3))
    }
}

fn abs_values(t: &Tensor) -> Result<Vec<f32>> {
    t.abs()?.flatten_all()?.to_vec1::<f32>()
}

impl ConvStack {
    /// The forward pass, recording each convolution's input and pre-ReLU output in `r`.
    fn observe(&self, x: &Tensor, r: &mut ConvRanges) -> Result<()> {
        let mut x = x.clone();
        for (i, c) in self.convs.iter().enumerate() {
            let y = c.forward(&x)?;
            r.observe(i, &abs_values(&x)?, &abs_values(&y)?);
            x = y.relu()?;
        }
        Ok(())
    }
}

/// Softmax of `[N, 1]` logits over N, then the weighted sum of `[N, E]` rows: ([1, E], [N]).
fn attend(logits: &Tensor, rows: &Tensor) -> Result<(Tensor, Tensor)> {
    let a = candle_nn::ops::softmax(&logits.squeeze(1)?, 0)?;
    let pooled = a.unsqueeze(0)?.matmul(rows)?;
    Ok((pooled, a))
}

struct CtEncoder {
    convs: ConvStack,
    attn1: Linear,
    attn2: Linear,
    proj: Linear,
}

impl CtEncoder {
    fn new(s: &NetworkSpec, vb: VarBuilder) -> Result<Self> {
        let c = s.ct_channels[2];
        Ok(CtEncoder {
            convs: ConvStack::new(1, s.ct_channels, &vb.pp("conv"))?,
            attn1: linear(c, s.attention_hidden, vb.pp("attn1"))?,
            attn2: linear(s.attention_hidden, 1, vb.pp("attn2"))?,
            proj: linear(c, s.embed, vb.pp("proj"))?,
        })
    }
    /// `[Z, Y, X]` -> (`[1, E]`, slice attention `[Z]`).
    fn forward(&self, volume: &Tensor) -> Result<(Tensor, Tensor)> {
        let f = self.convs.forward(&volume.unsqueeze(1)?)?;
        let logits = self.attn2.forward(&self.attn1.forward(&f)?.tanh()?)?;
        let (pooled, a) = attend(&logits, &f)?;
        Ok((self.proj.forward(&pooled)?.relu()?, a))
    }
}

struct SlideEncoder {
    convs: ConvStack,
    proj: Linear,
    attn_v: Linear,
    attn_u: Linear,
    attn_w: Linear,
}

impl SlideEncoder {
    fn new(s: &NetworkSpec, vb: VarBuilder) -> Result<Self> {
        Ok(SlideEncoder {
            convs: ConvStack::new(3, s.tile_channels, &vb.pp("conv"))?,
            proj: linear(s.tile_channels[2], s.embed, vb.pp("proj"))?,
            attn_v: linear(s.embed, s.attention_hidden, vb.pp("attn_v"))?,
            attn_u: linear(s.embed, s.attention_hidden, vb.pp("attn_u"))?,
            attn_w: linear(s.attention_hidden, 1, vb.pp("attn_w"))?,
        })
    }
    /// Per-tile embeddings: normalised `[N, 3, T, T]` -> `[N, E]`.
    fn embed_tiles(&self, tiles: &Tensor) -> Result<Tensor> {
        self.proj.forward(&self.convs.forward(tiles)?)?.relu()
    }
    /// Gated attention over tile embeddings: (`[1, E]`, attention `[N]`).
    fn pool(&self, h: &Tensor) -> Result<(Tensor, Tensor)> {
        let gate = candle_nn::ops::sigmoid(&self.attn_u.forward(h)?)?;
        let logits = self.attn_w.forward(&(self.attn_v.forward(h)?.tanh()? * gate)?)?;
        attend(&logits, h)
    }
}

struct ClinicalEncoder {
    fc1: Linear,
    fc2: Linear,
}

impl ClinicalEncoder {
    fn new(width: usize, s: &NetworkSpec, vb: VarBuilder) -> Result<Self> {
        Ok(ClinicalEncoder {
            fc1: linear(width, s.clinical_hidden, vb.pp("fc1"))?,
            fc2: linear(s.clinical_hidden, s.embed, vb.pp("fc2"))?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.relu()?)?.relu()
    }
}

struct Fusion {
    missing: [Tensor; 3],
    fc1: Linear,
    fc2: Linear,
}

impl Fusion {
    fn new(s: &NetworkSpec, vb: VarBuilder) -> Result<Self> {
        let m = |n: &str| vb.get(s.embed, n)?.unsqueeze(0);
        Ok(Fusion {
            missing: [m("missing_ct")?, m("missing_slide")?, m("missing_clinical")?],
            fc1: linear(3 * s.embed + 3, s.fusion_hidden, vb.pp("fc1"))?,
            fc2: linear(s.fusion_hidden, s.intervals, vb.pp("fc2"))?,
        })
    }
}

/// What the network is given for one case: each modality present or not.
pub struct NetInput {
    /// Preprocessed CT, `[Z, Y, X]`, values 0..1.
    pub ct: Option<Tensor>,
    /// Tile embeddings `[N, E]` ([`CrlmNet::embed_tiles`]).
    pub tile_embeddings: Option<Tensor>,
    /// Encoded clinical vector `[1, C]`.
    pub clinical: Option<Tensor>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetOutput {
    /// Hazard of liver metastasis in each interval, given none before.
    pub hazards: Vec<f32>,
    pub slice_attention: Option<Vec<f32>>,
    pub tile_attention: Option<Vec<f32>>,
}

pub struct CrlmNet {
    ct: CtEncoder,
    slide: SlideEncoder,
    clinical: ClinicalEncoder,
    fusion: Fusion,
    device: Device,
}

impl CrlmNet {
    /// Build from safetensors bytes; every tensor must be present with the right shape.
    pub fn from_safetensors(bytes: &[u8], spec: &NetworkSpec, clinical_width: usize, device: &Device) -> Result<Self> {
        let vb = VarBuilder::from_slice_safetensors(bytes, DType::F32, device)?;
        Ok(CrlmNet {
            ct: CtEncoder::new(spec, vb.pp("ct"))?,
            slide: SlideEncoder::new(spec, vb.pp("slide"))?,
            clinical: ClinicalEncoder::new(clinical_width, spec, vb.pp("clinical"))?,
            fusion: Fusion::new(spec, vb.pp("fusion"))?,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Per-tile embeddings only (benchmarks, the tile encoder's throughput).
    pub fn embed_tiles(&self, tiles: &Tensor) -> Result<Tensor> {
        self.slide.embed_tiles(tiles)
    }

    /// Widen INT8 calibration ranges with one case's activations (`crlm model quantize`): its
    /// CT `[Z, Y, X]` and normalised tiles `[N, 3, T, T]`.
    pub fn observe_activations(
        &self,
        ct: Option<&Tensor>,
        tiles: Option<&Tensor>,
        r: &mut ActivationRanges,
    ) -> Result<()> {
        if let Some(v) = ct {
            self.ct.convs.observe(&v.unsqueeze(1)?, &mut r.ct)?;
            r.ct_cases += 1;
        }
        if let Some(t) = tiles {
            self.slide.convs.observe(t, &mut r.tiles)?;
            r.tiles_seen += t.dim(0)?;
        }
        Ok(())
    }

    pub fn forward(&self, input: &NetInput) -> Result<NetOutput> {
        let mut parts = Vec::with_capacity(4);
        let mut mask = [0f32; 3];
        let mut slice_attention = None;
        let mut tile_attention = None;
        match &input.ct {
            Some(v) => {
                let (e, a) = self.ct.forward(v)?;
                parts.push(e);
                slice_attention = Some(a.to_vec1::<f32>()?);
                mask[0] = 1.0;
            }
            None => parts.push(self.fusion.missing[0].clone()),
        }
        match &input.tile_embeddings {
            Some(h) => {
                let (e, a) = self.slide.pool(h)?;
                parts.push(e);
                tile_attention = Some(a.to_vec1::<f32>()?);
                mask[1] = 1.0;
            }
            None => parts.push(self.fusion.missing[1].clone()),
        }
        match &input.clinical {
            Some(c) => {
                parts.push(self.clinical.forward(c)?);
                mask[2] = 1.0;
            }
            None => parts.push(self.fusion.missing[2].clone()),
        }
        parts.push(Tensor::from_slice(&mask, (1, 3), &self.device)?);
        let x = Tensor::cat(&parts, D::Minus1)?;
        let logits = self.fusion.fc2.forward(&self.fusion.fc1.forward(&x)?.relu()?)?;
        let hazards = candle_nn::ops::sigmoid(&logits)?.squeeze(0)?.to_vec1::<f32>()?;
        Ok(NetOutput { hazards, slice_attention, tile_attention })
    }
}

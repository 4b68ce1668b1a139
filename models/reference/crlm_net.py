"""CRLM-Net v1, the PyTorch twin of models/src/net.rs.

Parameter names are the candle model's names, so `save_file(model.state_dict(), ...)` gives a
weights.safetensors that the appliance loads by name. Keep the two in step: the parity vectors
(make_parity.py, checked by `cargo test`) fail when they drift.

Shapes (B cases; one case at a time on the appliance):
  ct        [B, Z, Y, X]     values 0..1 (the package's HU window)
  tiles     [B, N, 3, T, T]  normalised per channel; tile_mask [B, N] (1 = real tile)
  clinical  [B, C]
  present   [B, 3]           1 where CT, slide, clinical are present
"""

import torch
from torch import nn
import torch.nn.functional as F


class ConvStack(nn.Module):
    def __init__(self, cin, channels):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(cin, c1, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return x.mean(dim=(2, 3))


def masked_softmax(logits, mask):
    logits = logits.masked_fill(mask == 0, float("-inf"))
    return torch.softmax(logits, dim=1)


class CtEncoder(nn.Module):
    def __init__(self, s):
        super().__init__()
        c = s["ct_channels"][2]
        self.conv = ConvStack(1, s["ct_channels"])
        self.attn1 = nn.Linear(c, s["attention_hidden"])
        self.attn2 = nn.Linear(s["attention_hidden"], 1)
        self.proj = nn.Linear(c, s["embed"])

    def forward(self, ct):
        b, z, y, x = ct.shape
        f = self.conv(ct.reshape(b * z, 1, y, x)).reshape(b, z, -1)
        a = torch.softmax(self.attn2(torch.tanh(self.attn1(f))).squeeze(-1), dim=1)
        pooled = torch.einsum("bz,bzc->bc", a, f)
        return F.relu(self.proj(pooled)), a


class SlideEncoder(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.conv = ConvStack(3, s["tile_channels"])
        self.proj = nn.Linear(s["tile_channels"][2], s["embed"])
        self.attn_v = nn.Linear(s["embed"], s["attention_hidden"])
        self.attn_u = nn.Linear(s["embed"], s["attention_hidden"])
        self.attn_w = nn.Linear(s["attention_hidden"], 1)

    def forward(self, tiles, tile_mask):
        b, n, c, t, _ = tiles.shape
        h = F.relu(self.proj(self.conv(tiles.reshape(b * n, c, t, t)))).reshape(b, n, -1)
        logits = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))).squeeze(-1)
        a = masked_softmax(logits, tile_mask)
        return torch.einsum("bn,bne->be", a, h), a


class ClinicalEncoder(nn.Module):
    def __init__(self, width, s):
        super().__init__()
        self.fc1 = nn.Linear(width, s["clinical_hidden"])
        self.fc2 = nn.Linear(s["clinical_hidden"], s["embed"])

    def forward(self, x):
        return F.relu(self.fc2(F.relu(self.fc1(x))))


class Fusion(nn.Module):
    def __init__(self, s):
        super().__init__()
        e = s["embed"]
        self.missing_ct = nn.Parameter(torch.zeros(e))
        self.missing_slide = nn.Parameter(torch.zeros(e))
        self.missing_clinical = nn.Parameter(torch.zeros(e))
        self.fc1 = nn.Linear(3 * e + 3, s["fusion_hidden"])
        self.fc2 = nn.Linear(s["fusion_hidden"], s["intervals"])


class CrlmNet(nn.Module):
    def __init__(self, network, clinical_width):
        super().__init__()
        self.ct = CtEncoder(network)
        self.slide = SlideEncoder(network)
        self.clinical = ClinicalEncoder(clinical_width, network)
        self.fusion = Fusion(network)

    def forward(self, ct, tiles, tile_mask, clinical, present):
        """Returns hazards [B, K] and the slice [B, Z] and tile [B, N] attention."""
        e_ct, a_ct = self.ct(ct)
        e_sl, a_sl = self.slide(tiles, tile_mask)
        e_cl = self.clinical(clinical)
        f = self.fusion
        p = present.unsqueeze(-1)
        e_ct = p[:, 0] * e_ct + (1 - p[:, 0]) * f.missing_ct
        e_sl = p[:, 1] * e_sl + (1 - p[:, 1]) * f.missing_slide
        e_cl = p[:, 2] * e_cl + (1 - p[:, 2]) * f.missing_clinical
        x = torch.cat([e_ct, e_sl, e_cl, present], dim=1)
        hazards = torch.sigmoid(f.fc2(F.relu(f.fc1(x))))
        return hazards, a_ct, a_sl


def risk_2y(hazards):
    return 1 - torch.prod(1 - hazards, dim=1)


def discrete_time_nll(hazards, time_months, event, interval=6.0):
    """Negative log-likelihood of discrete-time hazards with right censoring.

    A case followed to month t survives every interval that ends by t; if it had the event, the
    interval holding t is the event interval. Beyond the last interval nothing is observed."""
    k = hazards.shape[1]
    idx = torch.clamp((time_months / interval).floor().long(), max=k)  # interval holding t
    ks = torch.arange(k, device=hazards.device).unsqueeze(0)
    survived = (ks < idx.unsqueeze(1)).float()
    ev = ((ks == idx.unsqueeze(1)) & (event.unsqueeze(1) > 0.5)).float()
    h = hazards.clamp(1e-6, 1 - 1e-6)
    ll = survived * torch.log(1 - h) + ev * torch.log(h)
    return -(ll.sum(dim=1)).mean()

//! The screens, drawn with embedded-graphics on any `DrawTarget` whose colour converts from
//! RGB888 (RGB565 panels and RGB888 frames alike). Knows nothing of the hardware. Laid out for
//! 480x320, 800x480 and 1024x600 (and anything between). Meaning is always carried by words;
//! colour only repeats it. Every string drawn is returned, so tests can prove what a screen says
//! (and that blinded mode never says a risk or a group).

use super::state::{ItemView, PanelState, ResultMode};
use embedded_graphics::mono_font::{MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Baseline, Text};
use profont::{PROFONT_14_POINT, PROFONT_18_POINT, PROFONT_24_POINT};
use serde::{Deserialize, Serialize};

/// The five screens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Screen {
    Status,
    Ingest,
    Processing,
    Result,
    Problem,
}

impl Screen {
    pub const ALL: [Screen; 5] = [Screen::Status, Screen::Ingest, Screen::Processing, Screen::Result, Screen::Problem];

    pub fn name(self) -> &'static str {
        match self {
            Screen::Status => "status",
            Screen::Ingest => "ingest",
            Screen::Processing => "processing",
            Screen::Result => "result",
            Screen::Problem => "problem",
        }
    }

    pub fn parse(s: &str) -> Option<Screen> {
        Screen::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// The text a render drew, in drawing order.
#[derive(Debug, Default, Clone)]
pub struct Rendered {
    pub texts: Vec<String>,
}

/// The words that show the risk group in open mode (also what blinded mode must never draw).
pub fn group_label(group: &str) -> String {
    format!("{} RISK", group.to_ascii_uppercase())
}

/// How a risk is written in open mode.
pub fn format_risk(r: f64) -> String {
    format!("{:.1}%", r * 100.0)
}

mod palette {
    use embedded_graphics::pixelcolor::Rgb888;
    pub const BG: Rgb888 = Rgb888::new(14, 20, 30);
    pub const FG: Rgb888 = Rgb888::new(240, 243, 246);
    pub const DIM: Rgb888 = Rgb888::new(150, 160, 172);
    pub const BAR: Rgb888 = Rgb888::new(30, 40, 54);
    pub const OK: Rgb888 = Rgb888::new(34, 160, 80);
    pub const WAIT: Rgb888 = Rgb888::new(230, 160, 20);
    pub const BAD: Rgb888 = Rgb888::new(205, 45, 45);
    pub const INFO: Rgb888 = Rgb888::new(40, 110, 190);
    pub const DEMO: Rgb888 = Rgb888::new(250, 200, 40);
    pub const INK: Rgb888 = Rgb888::new(10, 10, 10);
}

struct Fonts {
    title: &'static MonoFont<'static>,
    body: &'static MonoFont<'static>,
    big: &'static MonoFont<'static>,
}

fn fonts(size: Size) -> Fonts {
    if size.height <= 320 || size.width < 640 {
        Fonts { title: &PROFONT_18_POINT, body: &PROFONT_14_POINT, big: &PROFONT_24_POINT }
    } else {
        Fonts { title: &PROFONT_24_POINT, body: &PROFONT_18_POINT, big: &PROFONT_24_POINT }
    }
}

struct Painter<'a, D> {
    d: &'a mut D,
    size: Size,
    f: Fonts,
    pad: i32,
    texts: Vec<String>,
}

impl<D, C> Painter<'_, D>
where
    D: DrawTarget<Color = C>,
    C: PixelColor + From<Rgb888>,
{
    fn rect(&mut self, x: i32, y: i32, w: u32, h: u32, c: Rgb888) -> Result<(), D::Error> {
        Rectangle::new(Point::new(x, y), Size::new(w, h))
            .into_styled(PrimitiveStyle::with_fill(C::from(c)))
            .draw(self.d)
    }

    fn char_w(font: &MonoFont) -> i32 {
        (font.character_size.width + font.character_spacing) as i32
    }

    fn line_h(font: &MonoFont) -> i32 {
        font.character_size.height as i32 + 4
    }

    /// Draw one line, cut to `max_w` pixels; returns the y below it.
    fn text(&mut self, s: &str, x: i32, y: i32, font: &MonoFont, c: Rgb888, max_w: i32) -> Result<i32, D::Error> {
        let max_chars = (max_w / Self::char_w(font)).max(1) as usize;
        let shown: String = if s.chars().count() > max_chars {
            let mut t: String = s.chars().take(max_chars.saturating_sub(1)).collect();
            t.push('~');
            t
        } else {
            s.to_string()
        };
        Text::with_baseline(&shown, Point::new(x, y), MonoTextStyle::new(font, C::from(c)), Baseline::Top)
            .draw(self.d)?;
        self.texts.push(shown);
        Ok(y + Self::line_h(font))
    }

    /// Draw wrapped at word boundaries within `max_w`; at most `max_lines`; returns the y below.
    #[allow(clippy::too_many_arguments)] // position, font, colour and box: all needed, all plain
    fn wrap(
        &mut self,
        s: &str,
        x: i32,
        mut y: i32,
        font: &MonoFont,
        c: Rgb888,
        max_w: i32,
        max_lines: usize,
    ) -> Result<i32, D::Error> {
        let per_line = (max_w / Self::char_w(font)).max(8) as usize;
        let mut lines: Vec<String> = Vec::new();
        let mut cur = String::new();
        for word in s.split_whitespace() {
            if !cur.is_empty() && cur.len() + 1 + word.len() > per_line {
                lines.push(std::mem::take(&mut cur));
            }
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(word);
        }
        if !cur.is_empty() {
            lines.push(cur);
        }
        let total = lines.len();
        for (i, mut line) in lines.into_iter().take(max_lines).enumerate() {
            if i + 1 == max_lines && total > max_lines {
                line.push_str(" ~");
            }
            y = self.text(&line, x, y, font, c, max_w)?;
        }
        Ok(y)
    }

    fn width(&self) -> i32 {
        self.size.width as i32
    }

    /// Header bar with the screen title and time; DEMO banner; footer. Returns the content top.
    fn chrome(&mut self, title: &str, colour: Rgb888, st: &PanelState) -> Result<i32, D::Error> {
        let (w, h, pad) = (self.size.width, self.size.height, self.pad);
        self.rect(0, 0, w, h, palette::BG)?;
        let title_font = self.f.title;
        let bar_h = Self::line_h(title_font) + pad;
        self.rect(0, 0, w, bar_h as u32, colour)?;
        let time_w = Self::char_w(self.f.body) * st.time.chars().count() as i32;
        let title_room = self.width() - 3 * pad - if self.width() >= 640 { time_w } else { 0 };
        self.text(title, pad, pad / 2 + 2, title_font, palette::FG, title_room)?;
        if self.width() >= 640 && !st.time.is_empty() {
            let body = self.f.body;
            self.text(&st.time, self.width() - pad - time_w, pad / 2 + 4, body, palette::FG, time_w + 4)?;
        }
        let mut top = bar_h;
        if st.model.as_ref().is_some_and(|m| m.demo) {
            let body = self.f.body;
            let demo_h = Self::line_h(body) + 4;
            self.rect(0, top, w, demo_h as u32, palette::DEMO)?;
            self.text("DEMO - NOT FOR CLINICAL USE", pad, top + 3, body, palette::INK, self.width() - 2 * pad)?;
            top += demo_h;
        }
        // Footer: connection, outbox, disk.
        let body = self.f.body;
        let foot_h = Self::line_h(body) + pad / 2;
        let foot_y = h as i32 - foot_h;
        self.rect(0, foot_y, w, foot_h as u32, palette::BAR)?;
        let disk =
            st.disk_free_bytes.map(|b| format!("{:.1} GB free", b as f64 / 1e9)).unwrap_or_else(|| "disk ?".into());
        let broker = match st.broker.as_str() {
            "" | "not configured" => "none",
            b => b,
        };
        let footer = format!("Broker {broker} | Outbox {} | {disk}", st.outbox_depth);
        self.text(&footer, pad, foot_y + pad / 4 + 1, body, palette::DIM, self.width() - 2 * pad)?;
        Ok(top + pad)
    }

    fn bottom(&self) -> i32 {
        self.size.height as i32 - Self::line_h(self.f.body) - self.pad
    }

    /// "Label   value" rows with aligned values.
    fn row(&mut self, label: &str, value: &str, y: i32, value_colour: Rgb888) -> Result<i32, D::Error> {
        let body = self.f.body;
        let label_w = Self::char_w(body) * 11;
        self.text(label, self.pad, y, body, palette::DIM, label_w)?;
        let room = self.width() - 2 * self.pad - label_w;
        self.text(value, self.pad + label_w, y, body, value_colour, room)
    }
}

/// Draw `screen` from `state` on `target`. In blinded mode no risk and no group is drawn.
pub fn render<D, C>(target: &mut D, screen: Screen, state: &PanelState, mode: ResultMode) -> Result<Rendered, D::Error>
where
    D: DrawTarget<Color = C>,
    C: PixelColor + From<Rgb888>,
{
    let size = target.bounding_box().size;
    let pad = if size.height <= 320 { 10 } else { 16 };
    let mut p = Painter { d: target, size, f: fonts(size), pad, texts: Vec::new() };
    match screen {
        Screen::Status => status(&mut p, state)?,
        Screen::Ingest => ingest(&mut p, state)?,
        Screen::Processing => processing(&mut p, state)?,
        Screen::Result => result(&mut p, state, mode)?,
        Screen::Problem => problem(&mut p, state)?,
    }
    Ok(Rendered { texts: p.texts })
}

fn status<D: DrawTarget<Color = C>, C: PixelColor + From<Rgb888>>(
    p: &mut Painter<D>,
    st: &PanelState,
) -> Result<(), D::Error> {
    let mut y = p.chrome("Ready - drop exports into the share", palette::INFO, st)?;
    let line = Painter::<D>::line_h(p.f.body) + 2;
    y = p.row("Device", &st.device, y, palette::FG)?.max(y + line);
    let model = match &st.model {
        Some(m) => format!("{} {} #{}", m.name, m.version, m.sha256.get(..8).unwrap_or(&m.sha256)),
        None => "no model loaded".into(),
    };
    y = p.row("Model", &model, y, if st.model.is_some() { palette::FG } else { palette::WAIT })?;
    let (broker, bc) = match st.broker.as_str() {
        "connected" => ("connected", palette::OK),
        "" | "not configured" => ("not configured", palette::DIM),
        other => (other, palette::WAIT),
    };
    y = p.row("Broker", broker, y, bc)?;
    y = p.row("Outbox", &format!("{} waiting to send", st.outbox_depth), y, palette::FG)?;
    let disk = st.disk_free_bytes.map(|b| format!("{:.1} GB free", b as f64 / 1e9)).unwrap_or_else(|| "unknown".into());
    y = p.row("Disk", &disk, y, palette::FG)?;
    y = p.row("Time", &st.time, y, palette::FG)?;
    p.row("Last case", st.last_case.as_deref().unwrap_or("none yet"), y, palette::FG)?;
    Ok(())
}

fn check_item<D: DrawTarget<Color = C>, C: PixelColor + From<Rgb888>>(
    p: &mut Painter<D>,
    name: &str,
    item: &ItemView,
    y: i32,
) -> Result<i32, D::Error> {
    let body = p.f.body;
    let line = Painter::<D>::line_h(body);
    let (tag, colour) = if item.found { ("OK", palette::OK) } else { ("--", palette::WAIT) };
    let box_w = Painter::<D>::char_w(body) * 4;
    p.rect(p.pad, y - 2, box_w as u32, (line + 2) as u32, colour)?;
    p.text(tag, p.pad + Painter::<D>::char_w(body), y, body, palette::INK, box_w)?;
    let name_x = p.pad + box_w + p.pad;
    let name_w = Painter::<D>::char_w(body) * 9;
    p.text(name, name_x, y, body, palette::FG, name_w)?;
    let detail = match (item.found, item.detail.as_str()) {
        (true, d) => d.to_string(),
        (false, "" | "awaited") => "awaited".to_string(),
        (false, d) => format!("awaited: {d}"),
    };
    let room = p.width() - name_x - name_w - p.pad;
    p.text(&detail, name_x + name_w, y, body, if item.found { palette::FG } else { palette::WAIT }, room)?;
    Ok(y + line + 8)
}

fn ingest<D: DrawTarget<Color = C>, C: PixelColor + From<Rgb888>>(
    p: &mut Painter<D>,
    st: &PanelState,
) -> Result<(), D::Error> {
    let mut y = p.chrome("Receiving a case", palette::INFO, st)?;
    let Some(v) = &st.ingest else {
        p.text("No case is arriving.", p.pad, y, p.f.body, palette::DIM, p.width())?;
        return Ok(());
    };
    let (title, body) = (p.f.title, p.f.body);
    y = p.text(&format!("Case {}", v.case), p.pad, y, title, palette::FG, p.width() - 2 * p.pad)? + 4;
    y = check_item(p, "CT", &v.ct, y)?;
    y = check_item(p, "Slide", &v.slide, y)?;
    y = check_item(p, "Clinical", &v.clinical, y)?;
    let awaited: Vec<&str> = [("CT", &v.ct), ("slide", &v.slide), ("clinical file", &v.clinical)]
        .into_iter()
        .filter(|(_, i)| !i.found)
        .map(|(n, _)| n)
        .collect();
    let mins = v.waiting_seconds / 60;
    let msg = if awaited.is_empty() {
        "Everything received: checking the case.".to_string()
    } else {
        format!("Waiting for: {} ({mins} min so far)", awaited.join(", "))
    };
    let room = p.width() - 2 * p.pad;
    p.wrap(&msg, p.pad, y + 4, body, if awaited.is_empty() { palette::OK } else { palette::WAIT }, room, 2)?;
    Ok(())
}

fn processing<D: DrawTarget<Color = C>, C: PixelColor + From<Rgb888>>(
    p: &mut Painter<D>,
    st: &PanelState,
) -> Result<(), D::Error> {
    let mut y = p.chrome("Processing", palette::INFO, st)?;
    let Some(v) = &st.processing else {
        p.text("Nothing is being processed.", p.pad, y, p.f.body, palette::DIM, p.width())?;
        return Ok(());
    };
    let title = p.f.title;
    y = p.text(&format!("Case {}", v.case), p.pad, y, title, palette::FG, p.width() - 2 * p.pad)? + 4;
    y = p.row("Stage", &v.stage, y, palette::FG)? + 6;
    let bar_w = (p.width() - 2 * p.pad) as u32;
    let bar_h = Painter::<D>::line_h(p.f.body) as u32 + 6;
    p.rect(p.pad, y, bar_w, bar_h, palette::BAR)?;
    let frac = if v.total > 0 { (v.done as f64 / v.total as f64).clamp(0.0, 1.0) } else { 0.0 };
    p.rect(p.pad, y, (bar_w as f64 * frac) as u32, bar_h, palette::INFO)?;
    y += bar_h as i32 + 6;
    let progress = if v.total > 0 {
        format!("{} / {} ({:.0}% done)", v.done, v.total, frac * 100.0)
    } else {
        "working".to_string()
    };
    y = p.row("Progress", &progress, y, palette::FG)?;
    p.row("Elapsed", &format!("{}:{:02}", v.elapsed_seconds / 60, v.elapsed_seconds % 60), y, palette::FG)?;
    Ok(())
}

fn result<D: DrawTarget<Color = C>, C: PixelColor + From<Rgb888>>(
    p: &mut Painter<D>,
    st: &PanelState,
    mode: ResultMode,
) -> Result<(), D::Error> {
    let Some(v) = &st.result else {
        let y = p.chrome("Result", palette::INFO, st)?;
        p.text("No prediction yet.", p.pad, y, p.f.body, palette::DIM, p.width())?;
        return Ok(());
    };
    let (title, body, big) = (p.f.title, p.f.body, p.f.big);
    let room = p.width() - 2 * p.pad;
    match mode {
        ResultMode::Blinded => {
            let mut y = p.chrome("Prediction locked", palette::OK, st)?;
            y = p.text(&format!("Case {}", v.case), p.pad, y, title, palette::FG, room)? + 6;
            y = p.text("PREDICTION LOCKED", p.pad, y, big, palette::OK, room)? + 6;
            y = p.row("Record", &format!("ledger #{}", v.ledger_sequence), y, palette::FG)?;
            y = p.row("Locked at", &v.locked_at, y, palette::FG)? + 6;
            let bottom = p.bottom();
            let lines = ((bottom - y) / Painter::<D>::line_h(body)).max(1) as usize;
            p.wrap(
                "Blinded for the study: the result is not shown and must not guide care.",
                p.pad,
                y,
                body,
                palette::DIM,
                room,
                lines,
            )?;
        }
        ResultMode::Open => {
            let mut y = p.chrome("Result - research use only", palette::INFO, st)?;
            y = p.text(&format!("Case {}", v.case), p.pad, y, title, palette::FG, room)? + 4;
            let risk = v.risk_2y.unwrap_or(f64::NAN);
            let threshold = v.threshold.unwrap_or(f64::NAN);
            let high = v.risk_group.as_deref() == Some("high");
            let group_colour = if high { palette::BAD } else { palette::OK };
            let risk_text = if risk.is_finite() { format_risk(risk) } else { "n/a".into() };
            let big_w = Painter::<D>::char_w(big) * (risk_text.len() as i32 + 1) + p.pad;
            p.text(&risk_text, p.pad, y, big, palette::FG, big_w)?;
            y = p.text("2-year risk of liver metastasis", p.pad + big_w, y + 6, body, palette::DIM, room - big_w)? + 6;
            // Gauge 0-100 % with the locked threshold marked.
            let gw = room as u32;
            let gh = 14u32;
            p.rect(p.pad, y, gw, gh, palette::BAR)?;
            if risk.is_finite() {
                p.rect(p.pad, y, (gw as f64 * risk.clamp(0.0, 1.0)) as u32, gh, group_colour)?;
            }
            if threshold.is_finite() {
                let tx = p.pad + (gw as f64 * threshold.clamp(0.0, 1.0)) as i32;
                p.rect(tx - 1, y - 4, 3, gh + 8, palette::FG)?;
            }
            y += gh as i32 + 10;
            if let Some(g) = &v.risk_group {
                let label = format!(
                    "{} - locked threshold {}",
                    group_label(g),
                    if threshold.is_finite() { format_risk(threshold) } else { "n/a".into() }
                );
                let lh = Painter::<D>::line_h(body);
                p.rect(p.pad, y - 2, room as u32, (lh + 4) as u32, group_colour)?;
                y = p.text(&label, p.pad + 6, y, body, palette::INK, room - 12)? + 6;
            }
            y = p.row("Based on", &v.modalities.join(", "), y, palette::FG)?;
            p.row("Locked", &format!("ledger #{} at {}", v.ledger_sequence, v.locked_at), y, palette::FG)?;
        }
    }
    Ok(())
}

fn problem<D: DrawTarget<Color = C>, C: PixelColor + From<Rgb888>>(
    p: &mut Painter<D>,
    st: &PanelState,
) -> Result<(), D::Error> {
    let mut y = p.chrome("Problem - action needed", palette::BAD, st)?;
    let Some(v) = &st.problem else {
        p.text("No problem.", p.pad, y, p.f.body, palette::DIM, p.width())?;
        return Ok(());
    };
    let (title, body) = (p.f.title, p.f.body);
    let room = p.width() - 2 * p.pad;
    y = p.text(&v.title, p.pad, y, title, palette::FG, room)? + 4;
    y = p.wrap(&v.what, p.pad, y, body, palette::FG, room, 3)? + 6;
    y = p.text("What to do:", p.pad, y, body, palette::WAIT, room)?;
    y = p.wrap(&v.action, p.pad, y, body, palette::FG, room, 2)? + 6;
    p.text(&format!("Support code: {}", v.code), p.pad, y, body, palette::DIM, room)?;
    Ok(())
}

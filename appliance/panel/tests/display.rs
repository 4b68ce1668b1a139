//! Front-panel screens: golden images for every screen at every size, blinded mode, and
//! drawing on RGB565 targets. Refresh the goldens after an intended change with
//! `CRLM_UPDATE_GOLDEN=1 cargo test -p crlm-panel --test display` and review the PNGs.

use crlm_drivers::display::Frame;
use crlm_drivers::display::png::decode_png;
use crlm_panel::state::{PanelState, ResultMode};
use crlm_panel::task::{render_frame, render_png};
use crlm_panel::ui::{self, Screen, format_risk, group_label};
use embedded_graphics::pixelcolor::Rgb565;
use embedded_graphics::prelude::*;
use std::path::PathBuf;

const SIZES: [(u32, u32); 3] = [(480, 320), (800, 480), (1024, 600)];

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/display")
}

/// Every screen, plus the result screen in open mode.
fn variants() -> Vec<(Screen, ResultMode, String)> {
    let mut v: Vec<_> = Screen::ALL.iter().map(|s| (*s, ResultMode::Blinded, s.name().to_string())).collect();
    v.push((Screen::Result, ResultMode::Open, "result-open".into()));
    v
}

#[test]
fn golden_images_match_for_every_screen_and_size() {
    let update = std::env::var("CRLM_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let st = PanelState::example();
    let mut failures = Vec::new();
    for (w, h) in SIZES {
        for (screen, mode, name) in variants() {
            let file = golden_dir().join(format!("{name}-{w}x{h}.png"));
            let png = render_png(screen, &st, mode, Size::new(w, h)).unwrap();
            if update {
                std::fs::create_dir_all(golden_dir()).unwrap();
                std::fs::write(&file, &png).unwrap();
                continue;
            }
            let Ok(golden) = std::fs::read(&file) else {
                failures.push(format!("{}: missing (run with CRLM_UPDATE_GOLDEN=1)", file.display()));
                continue;
            };
            let (gw, gh, gpix) = decode_png(&golden).unwrap();
            let (_, _, apix) = decode_png(&png).unwrap();
            if (gw, gh) != (w, h) || gpix != apix {
                let differing = gpix.chunks(3).zip(apix.chunks(3)).filter(|(a, b)| a != b).count();
                let actual = std::env::temp_dir().join(format!("crlm-actual-{name}-{w}x{h}.png"));
                std::fs::write(&actual, &png).unwrap();
                failures
                    .push(format!("{name} {w}x{h}: {differing} pixels differ; actual frame in {}", actual.display()));
            }
        }
    }
    assert!(failures.is_empty(), "golden mismatches:\n{}", failures.join("\n"));
}

fn words(texts: &[String]) -> Vec<String> {
    texts.iter().flat_map(|t| t.split(|c: char| !c.is_ascii_alphanumeric()).map(str::to_ascii_lowercase)).collect()
}

#[test]
fn blinded_mode_never_renders_a_risk_or_a_group() {
    for (risk, group) in [(0.234, "high"), (0.071, "low")] {
        let mut st = PanelState::example();
        if let Some(r) = st.result.as_mut() {
            r.risk_2y = Some(risk);
            r.risk_group = Some(group.into());
        }
        st.last_case = Some(format!("{} predicted", st.result.as_ref().unwrap().case));
        for (w, h) in SIZES {
            for screen in Screen::ALL {
                let (_, rendered) = render_frame(screen, &st, ResultMode::Blinded, Size::new(w, h));
                let all = rendered.texts.join("\n");
                assert!(!all.contains(&format_risk(risk)), "{screen:?} {w}x{h} shows the risk:\n{all}");
                assert!(!all.contains(&format!("{:.0}", risk * 100.0)) || screen == Screen::Processing, "{all}");
                assert!(!all.contains(&group_label(group)), "{screen:?} shows the group:\n{all}");
                let ws = words(&rendered.texts);
                assert!(!ws.iter().any(|w| w == "high" || w == "low"), "{screen:?} {w}x{h} names a group:\n{all}");
                assert!(!all.to_ascii_lowercase().contains("risk"), "{screen:?} {w}x{h} talks about risk:\n{all}");
            }
            // The blinded result confirms the lock instead.
            let (_, r) = render_frame(Screen::Result, &st, ResultMode::Blinded, Size::new(w, h));
            assert!(r.texts.iter().any(|t| t == "PREDICTION LOCKED"));
            assert!(r.texts.iter().any(|t| t.contains("ledger #42")));
        }
        // Open mode does show both, so the checks above can fail.
        let (_, open) = render_frame(Screen::Result, &st, ResultMode::Open, Size::new(480, 320));
        assert!(open.texts.iter().any(|t| t == &format_risk(risk)), "{:?}", open.texts);
        assert!(open.texts.iter().any(|t| t.starts_with(&group_label(group))), "{:?}", open.texts);
    }
}

#[test]
fn screens_draw_the_same_on_rgb565_and_rgb888_targets() {
    let st = PanelState::example();
    for (w, h) in SIZES {
        for screen in Screen::ALL {
            let size = Size::new(w, h);
            let mut f565 = Frame::new(size, Rgb565::BLACK);
            let r565 = ui::render(&mut f565, screen, &st, ResultMode::Open).unwrap();
            let (f888, r888) = render_frame(screen, &st, ResultMode::Open, size);
            assert!(f565 == f888.to_rgb565(), "{screen:?} {w}x{h}");
            assert_eq!(r565.texts, r888.texts);
        }
    }
}

#[test]
fn every_screen_says_something_at_the_smallest_size_and_demo_is_always_announced() {
    let st = PanelState::example();
    for screen in Screen::ALL {
        let (_, r) = render_frame(screen, &st, ResultMode::Blinded, Size::new(480, 320));
        assert!(r.texts.len() >= 4, "{screen:?}: {:?}", r.texts);
        assert!(r.texts.iter().any(|t| t == "DEMO - NOT FOR CLINICAL USE"), "{screen:?}");
    }
    let mut clinical = st.clone();
    clinical.model.as_mut().unwrap().demo = false;
    let (_, r) = render_frame(Screen::Status, &clinical, ResultMode::Blinded, Size::new(480, 320));
    assert!(!r.texts.iter().any(|t| t.contains("DEMO")));
}

//! A multi-file slide's index from the share: a Hamamatsu VMS key file and an MRXS
//! `Slidedat.ini`, sniffed and parsed. Besides not crashing, whatever an index names must lie
//! beside it (or, for MRXS, be the one `.mrxs` beside the slide's folder): the appliance reads a
//! slide's files only from there, so a name that resolved anywhere else would be a way out of
//! the case folder.
#![no_main]
use crlm_models::slide::index::{IndexKind, SlideIndex, member_path, sniff};
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

fuzz_target!(|data: &[u8]| {
    let _ = sniff(data);
    for (kind, ext) in [(IndexKind::Vms, "vms"), (IndexKind::Mrxs, "ini")] {
        let path = crlm_fuzz::scratch(data, ext);
        let Ok(file) = std::fs::File::open(&path) else { return };
        let Ok(index) = SlideIndex::read(kind, &file, &path) else { continue };
        let Some(dir) = path.parent() else { return };
        let mrxs = index.open_path(&path);
        for m in index.required().iter().chain(&index.optional()) {
            let p = member_path(dir, m);
            let plain = Path::new(m).components().all(|c| matches!(c, Component::Normal(_)));
            let beside = plain && p.parent() == Some(dir);
            let the_mrxs = kind == IndexKind::Mrxs && Some(&p) == mrxs.as_ref();
            assert!(beside || the_mrxs, "{kind:?} index names {m:?}, which resolves to {p:?} outside {dir:?}");
            assert!(index.names(&path, &p), "{kind:?} index does not name its own member {m:?}");
        }
    }
});

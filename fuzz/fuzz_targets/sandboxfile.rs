//! The Sandboxfile loader on arbitrary bytes: it must never panic, and every diagnostic must
//! render (spans inside the text, on character boundaries).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(invalid) = msb::manifest::parse(Path::new("/nonexistent/Sandboxfile"), data) {
        let handler = miette::GraphicalReportHandler::new();
        for report in invalid.reports() {
            let mut rendered = String::new();
            let _ = handler.render_report(&mut rendered, report.as_ref());
        }
        let _ = invalid.to_json();
    }
});

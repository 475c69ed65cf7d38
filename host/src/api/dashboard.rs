//! The web dashboard: a plain HTML/CSS/JS page served from the binary on
//! the API's port (`/` and `/ui/…`), reading the same API a tenant's token
//! reads. Its libraries (dagre, uPlot) are vendored from npm at build time
//! (`host/build.rs`), so a page never reaches outside the server, and its
//! Content-Security-Policy allows scripts from the server only.
//!
//! With `SLUICE_UI_DIR` set, the page's own files (not the libraries) are
//! read from that directory on each request, to work on them without a
//! rebuild.

use std::path::Path;

/// One file the dashboard serves.
struct Asset {
    /// Its path under `/ui/`.
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    /// True for the page's own files, which `SLUICE_UI_DIR` replaces.
    own: bool,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../../ui/index.html"),
        own: true,
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../ui/app.js"),
        own: true,
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../ui/style.css"),
        own: true,
    },
    Asset {
        name: "vendor/dagre.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!(concat!(env!("OUT_DIR"), "/vendor/dagre.min.js")),
        own: false,
    },
    Asset {
        name: "vendor/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!(concat!(env!("OUT_DIR"), "/vendor/uPlot.iife.min.js")),
        own: false,
    },
    Asset {
        name: "vendor/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!(concat!(env!("OUT_DIR"), "/vendor/uPlot.min.css")),
        own: false,
    },
];

/// What the dashboard's pages may load: only the server's own files.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// A file of the dashboard: its content type and bytes, for a request path
/// (`/`, `/ui`, `/ui/`, `/ui/<name>`); `None` for anything else.
pub fn asset(path: &str) -> Option<(&'static str, Vec<u8>)> {
    let name = match path {
        "/" | "/ui" | "/ui/" => "index.html",
        p => p.strip_prefix("/ui/")?,
    };
    let a = ASSETS.iter().find(|a| a.name == name)?;
    if a.own
        && let Some(dir) = std::env::var_os("SLUICE_UI_DIR")
        && let Ok(bytes) = std::fs::read(Path::new(&dir).join(a.name))
    {
        return Some((a.content_type, bytes));
    }
    Some((a.content_type, a.bytes.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_libraries_are_served_and_nothing_else() {
        let (ct, index) = asset("/").unwrap();
        assert!(ct.starts_with("text/html"));
        assert_eq!(asset("/ui/").unwrap().1, index);
        for name in [
            "app.js",
            "style.css",
            "vendor/dagre.min.js",
            "vendor/uPlot.iife.min.js",
            "vendor/uPlot.min.css",
        ] {
            let (_, bytes) = asset(&format!("/ui/{name}")).unwrap();
            assert!(bytes.len() > 100, "{name} is {} bytes", bytes.len());
        }
        assert!(String::from_utf8_lossy(&asset("/ui/vendor/dagre.min.js").unwrap().1).contains("var dagre"));
        assert!(String::from_utf8_lossy(&asset("/ui/vendor/uPlot.iife.min.js").unwrap().1).contains("uPlot"));
        for bad in [
            "/ui/../Cargo.toml",
            "/ui/vendor",
            "/ui/missing.js",
            "/index.html",
            "/ui/vendor/../app.js",
        ] {
            assert!(asset(bad).is_none(), "{bad}");
        }
    }
}

//! The browser page at `/`: a microphone demo of protocol v1 (capture through an AudioWorklet,
//! PCM over `/v1/stream`, level meter, speech segments). The files live next to this module
//! and are compiled into the binary: no build step and nothing to install beside it.
//!
//! Every answer carries a Content-Security-Policy that allows only the page's own scripts,
//! styles and worklet, and connections to its own origin (`connect-src 'self'`, which
//! covers the same host's `ws://`/`wss://` in current browsers).

use actix_web::http::header;
use actix_web::{web, HttpResponse};

/// What the page may load and connect to: its own files and its own origin, nothing inline.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One file of the page.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

static ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("app.js"),
    },
    Asset {
        path: "/capture-worklet.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("capture-worklet.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("style.css"),
    },
];

/// Registers `GET` for the page and each of its files.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for asset in &ASSETS {
        cfg.route(
            asset.path,
            web::get().to(move || async move { respond(asset) }),
        );
    }
}

fn respond(asset: &'static Asset) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, asset.content_type))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((
            header::HeaderName::from_static("permissions-policy"),
            "microphone=(self), camera=(), geolocation=()",
        ))
        .insert_header((
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ))
        .insert_header((
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ))
        // The files change only with the binary: revalidate rather than cache stale ones.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(asset.body)
}

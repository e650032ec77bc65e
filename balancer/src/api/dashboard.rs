//! The live dashboard at `/`: one page, its script, style sheet and icon,
//! compiled into the binary from `balancer/assets/` so the daemon serves it
//! with no files beside it and the browser loads nothing from elsewhere.
//! The page polls `/api/v1/status` once a second and draws the history it
//! keeps itself; the server side is only these static answers.
//!
//! Every answer carries a `Content-Security-Policy` that allows this origin
//! only and no inline script or style: a reference to another host, or an
//! injected `<script>`, is refused by the browser and shows as a console
//! error (which the end-to-end test fails on).

use axum::{
    extract::Path,
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

/// Same origin only; `connect-src` covers the page's `fetch` of the status.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One file of the page.
#[derive(Clone, Copy, Debug)]
pub struct Asset {
    /// Its name under `/assets/`.
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// The page itself, served at `/`.
pub const INDEX: Asset = Asset {
    name: "dashboard.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../assets/dashboard.html"),
};

/// What the page loads, served at `/assets/{name}`.
pub const ASSETS: [Asset; 3] = [
    Asset {
        name: "dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/dashboard.js"),
    },
    Asset {
        name: "dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/dashboard.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../assets/favicon.svg"),
    },
];

/// The asset called `name`, if the page has one.
#[must_use]
pub fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.name == name)
}

/// `GET /`.
pub async fn index() -> Response {
    respond(&INDEX)
}

/// `GET /assets/{name}`: 404 for a name the page does not have.
pub async fn asset(Path(name): Path<String>) -> Response {
    match find(&name) {
        Some(asset) => respond(asset),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))],
            "no such dashboard asset\n",
        )
            .into_response(),
    }
}

fn respond(asset: &'static Asset) -> Response {
    // `no-cache` revalidates on every load: after an upgrade the page and
    // its script never come from different builds.
    let headers: [(HeaderName, HeaderValue); 5] = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    (headers, asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use axum::{body::to_bytes, http::header};

    use super::*;

    /// The only absolute URL the files may contain: the SVG namespace name,
    /// an identifier that no browser fetches.
    const SVG_NAMESPACE: &str = "http://www.w3.org/2000/svg";

    fn text(asset: &Asset) -> &'static str {
        std::str::from_utf8(asset.body).expect("assets are UTF-8")
    }

    /// Values of every `src="..."` and `href="..."` in `html`.
    fn references(html: &str) -> Vec<&str> {
        ["src=\"", "href=\""]
            .iter()
            .flat_map(|attr| {
                html.match_indices(attr).filter_map(|(at, _)| {
                    let rest = &html[at + attr.len()..];
                    rest.split('"').next()
                })
            })
            .collect()
    }

    async fn body(response: Response) -> Vec<u8> {
        to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body")
            .to_vec()
    }

    #[tokio::test]
    async fn the_index_is_html_that_is_never_cached_and_confined_to_its_origin() {
        let response = index().await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let csp = headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains('*'),
            "{csp}"
        );
        let html = String::from_utf8(body(response).await).expect("utf-8");
        assert!(html.starts_with("<!doctype html>"), "{html}");
    }

    #[tokio::test]
    async fn each_asset_is_served_with_its_own_content_type() {
        for (name, content_type) in [
            ("dashboard.js", "text/javascript; charset=utf-8"),
            ("dashboard.css", "text/css; charset=utf-8"),
            ("favicon.svg", "image/svg+xml"),
        ] {
            let response = asset(Path(name.to_owned())).await;
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                content_type,
                "{name}"
            );
            assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
            assert!(
                response
                    .headers()
                    .contains_key(header::CONTENT_SECURITY_POLICY)
            );
            let expected = find(name).expect("listed").body;
            assert_eq!(body(response).await, expected, "{name}");
        }
    }

    #[tokio::test]
    async fn an_unknown_or_traversing_asset_name_is_404() {
        for name in ["nope.js", "../Cargo.toml", "dashboard.html", ""] {
            let response = asset(Path(name.to_owned())).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{name:?}");
        }
    }

    #[test]
    fn the_page_references_only_assets_this_module_serves() {
        let html = text(&INDEX);
        let refs = references(html);
        assert!(refs.len() >= 3, "{refs:?}");
        for reference in refs {
            let served = reference
                .strip_prefix("/assets/")
                .is_some_and(|name| find(name).is_some());
            let api = ["/metrics", "/api/v1/status"].contains(&reference);
            assert!(served || api, "the page references {reference:?}");
        }
        for asset in ASSETS {
            let name = format!("/assets/{}", asset.name);
            if asset.name != "favicon.svg" {
                assert!(html.contains(&name), "the page never loads {name}");
            }
        }
    }

    #[test]
    fn no_file_names_another_host_or_carries_inline_script_or_style() {
        for asset in ASSETS.iter().chain([&INDEX]) {
            let text = text(asset).replace(SVG_NAMESPACE, "");
            for needle in ["http://", "https://", "//cdn", "url(", "@import", "eval("] {
                assert!(!text.contains(needle), "{} contains {needle}", asset.name);
            }
        }
        let html = text(&INDEX);
        assert!(
            !html.contains("style=\""),
            "inline style would break the CSP"
        );
        assert!(!html.contains("<style"), "inline style would break the CSP");
        assert!(
            html.match_indices("<script").count() == 1 && html.contains("<script src=\"/assets/"),
            "one external script, no inline one"
        );
        assert!(
            !text(&ASSETS[0]).contains("innerHTML"),
            "text goes in as text"
        );
    }
}

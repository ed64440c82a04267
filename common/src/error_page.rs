//! Errors burrow answers itself on an HTTP tunnel's behalf (the relay for a missing tunnel,
//! the agent for a local server that is down): a small page for a browser, one line of text
//! for curl and scripts.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    HeaderMap, Response, StatusCode,
    header::{self, HeaderValue},
};

/// An answer burrow gives itself when it cannot hand a request on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPage {
    pub status: StatusCode,
    /// A few words: "Tunnel not found".
    pub title: &'static str,
    /// One sentence saying what happened: "No tunnel is registered for myapp.relay.example.com."
    pub detail: String,
}

/// The page has no script and fetches nothing; the policy holds it to that even if some text
/// ever slipped past the escaping.
const PAGE_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'";

const PAGE_STYLE: &str = "body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;\
font:16px/1.5 system-ui,sans-serif;background:#f6f7f9;color:#1d2330}\
main{max-width:34rem;padding:2rem}\
.status{margin:0;font-weight:600;color:#6b7280;letter-spacing:.05em}\
h1{margin:.25rem 0 .75rem;font-size:1.6rem}\
p{overflow-wrap:anywhere}\
footer{margin-top:2.5rem;font-size:.8rem;color:#6b7280}\
@media (prefers-color-scheme:dark){body{background:#15171c;color:#e5e7eb}}";

impl ErrorPage {
    pub fn new(status: StatusCode, title: &'static str, detail: String) -> Self {
        Self { status, title, detail }
    }

    /// The response: HTML when `wants_html` (see [`wants_html`]), plain text otherwise.
    pub fn render(&self, wants_html: bool) -> Response<Full<Bytes>> {
        let (body, content_type) = if wants_html {
            (self.html(), "text/html; charset=utf-8")
        } else {
            (self.plain_text(), "text/plain; charset=utf-8")
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        // The page describes this moment; a cached copy would outlive the agent coming back.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        if wants_html {
            headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_POLICY));
        }
        response
    }

    pub fn plain_text(&self) -> String {
        format!("{} {}: {}\n", self.status.as_u16(), self.title, self.detail)
    }

    fn html(&self) -> String {
        let code = self.status.as_u16();
        let title = escape_html(self.title);
        let detail = escape_html(&self.detail);
        format!(
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{code} {title}</title>\n<style>{PAGE_STYLE}</style>\n</head>\n<body>\n<main>\n\
             <p class=\"status\">{code}</p>\n<h1>{title}</h1>\n<p>{detail}</p>\n\
             <footer>burrow</footer>\n</main>\n</body>\n</html>\n"
        )
    }
}

/// Browsers list text/html in Accept; curl and most scripts do not, and read text better.
pub fn wants_html(headers: &HeaderMap) -> bool {
    const HTML: &[u8] = b"text/html";
    headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|accept| accept.as_bytes().windows(HTML.len()).any(|window| window.eq_ignore_ascii_case(HTML)))
}

/// Text made safe inside an HTML element or a quoted attribute: the host in these pages comes
/// from the visitor.
fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use hyper::body::Body;

    use super::*;

    async fn body_text(response: Response<Full<Bytes>>) -> anyhow::Result<String> {
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8(bytes.to_vec())?)
    }

    fn accepting(accept: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(accept).expect("test Accept values are visible ASCII"));
        headers
    }

    fn page(host: &str) -> ErrorPage {
        ErrorPage::new(StatusCode::NOT_FOUND, "Tunnel not found", format!("No tunnel is registered for {host}."))
    }

    #[test]
    fn browsers_get_html_and_everyone_else_text() {
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(wants_html(&accepting(firefox)));
        assert!(wants_html(&accepting("TEXT/HTML")));
        assert!(!wants_html(&accepting("*/*")), "curl's default");
        assert!(!wants_html(&accepting("application/json")));
        assert!(!wants_html(&HeaderMap::new()));
        let mut two_headers = accepting("application/json");
        two_headers.append(header::ACCEPT, HeaderValue::from_static("text/html"));
        assert!(wants_html(&two_headers));
    }

    #[test]
    fn both_forms_carry_type_and_caching_headers() {
        let page = page("myapp.relay.example.com");
        for (html, content_type) in [(true, "text/html; charset=utf-8"), (false, "text/plain; charset=utf-8")] {
            let response = page.render(html);
            let headers = response.headers();
            assert_eq!(headers[header::CONTENT_TYPE], content_type);
            assert_eq!(headers[header::CACHE_CONTROL], "no-store");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(headers.contains_key(header::CONTENT_SECURITY_POLICY), html);
            let body_len = if html { page.html().len() } else { page.plain_text().len() };
            assert_eq!(response.body().size_hint().exact(), Some(body_len as u64), "Content-Length comes from this");
        }
    }

    #[tokio::test]
    async fn html_page_shows_status_title_detail_and_footer() -> anyhow::Result<()> {
        let html = body_text(page("myapp.relay.example.com").render(true)).await?;
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.contains("<title>404 Tunnel not found</title>"));
        assert!(html.contains("<p class=\"status\">404</p>"));
        assert!(html.contains("<h1>Tunnel not found</h1>"));
        assert!(html.contains("<p>No tunnel is registered for myapp.relay.example.com.</p>"));
        assert!(html.contains("<footer>burrow</footer>"));
        assert!(!html.contains("<script") && !html.contains("http://") && !html.contains("https://"), "self-contained");
        Ok(())
    }

    #[tokio::test]
    async fn text_from_the_visitor_is_escaped_in_html_only() -> anyhow::Result<()> {
        let page = page("<script>alert('x')</script>&\".example.com");
        let html = body_text(page.render(true)).await?;
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;.example.com"));
        let text = body_text(page.render(false)).await?;
        assert!(text.contains("<script>alert('x')</script>&\".example.com"), "plain text is shown as it is");
        Ok(())
    }

    #[test]
    fn escape_html_replaces_the_five_special_characters() {
        assert_eq!(
            escape_html(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        assert_eq!(escape_html("myapp.relay.example.com"), "myapp.relay.example.com");
        assert_eq!(escape_html("&amp;"), "&amp;amp;", "already-escaped text is not trusted");
        assert_eq!(escape_html(""), "");
    }
}

//! One session per browser, shared by its tabs: a cookie that names the
//! session (`st=ID.TOKEN`), read on a page load and set on the response.

use super::Live;
use crate::{Error, InitialRender, Result};

impl Live {
    /// The name of the cookie that names a browser's session (default
    /// `st`), and whether it is `Secure` (sent over HTTPS only: set it when
    /// the site is served over HTTPS, as it should be on the internet).
    /// The name must be a cookie token: ASCII letters, digits, `-` and `_`.
    pub fn session_cookie(mut self, name: &str, secure: bool) -> Result<Live> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(Error::config(format!(
                "session_cookie: {name:?} is not a cookie name (ASCII letters, digits, - and _)"
            )));
        }
        let c = self.config_mut();
        c.cookie = name.to_owned();
        c.secure_cookie = secure;
        Ok(self)
    }

    /// The session this browser's cookie names, if it is still live: its
    /// HTML now and a fresh token (see [`StateTemplate::open_page`]; in a
    /// cluster it does not move the session). `cookie_header` is the
    /// request's `Cookie` header. `None` when there is no such cookie, or
    /// its session is gone, expired, revoked or its token does not open:
    /// make a new session then ([`StateTemplate::new_session`]) and set
    /// the cookie with [`Live::set_cookie`]. Every tab of the browser sends
    /// the cookie, so they all share one session.
    ///
    /// ```no_run
    /// # async fn page(live: statetemplate::Live, headers: axum::http::HeaderMap) -> statetemplate::Result<()> {
    /// let cookie = headers.get(axum::http::header::COOKIE).and_then(|v| v.to_str().ok());
    /// let initial = match live.cookie_session(cookie).await {
    ///     Some(existing) => existing,
    ///     None => live.engine().new_session("page.html", &serde_json::json!({})).await?,
    /// };
    /// let set_cookie = live.set_cookie(&initial); // the response's Set-Cookie
    /// let html = live.mount(&initial);            // the response's body
    /// # Ok(()) }
    /// ```
    ///
    /// [`StateTemplate::open_page`]: crate::StateTemplate::open_page
    /// [`StateTemplate::new_session`]: crate::StateTemplate::new_session
    pub async fn cookie_session(&self, cookie_header: Option<&str>) -> Option<InitialRender> {
        let (sid, token) = read_cookie(cookie_header?, &self.config.cookie)?;
        self.engine.open_page(sid, token).await.ok()
    }

    /// The `Set-Cookie` value that names `initial`'s session for this
    /// browser: `NAME=ID.TOKEN; Path=/; HttpOnly; SameSite=Lax` (and
    /// `Secure` when [`Live::session_cookie`] says so). Scripts cannot read
    /// it, and other sites cannot send it with their requests' forms.
    pub fn set_cookie(&self, initial: &InitialRender) -> String {
        format!(
            "{}={}.{}; Path=/; HttpOnly; SameSite=Lax{}",
            self.config.cookie,
            initial.session_id,
            initial.token,
            if self.config.secure_cookie {
                "; Secure"
            } else {
                ""
            }
        )
    }
}

/// The session id and token of cookie `name` in a `Cookie` header.
fn read_cookie<'a>(header: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    header.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        if k != name {
            return None;
        }
        v.trim_matches('"').split_once('.')
    })
}

#[cfg(test)]
mod tests {
    use minijinja::Environment;

    use super::*;
    use crate::StateTemplate;
    use crate::token::KeyRing;

    fn live() -> Live {
        let mut env = Environment::new();
        env.add_template("p.html", "<p>{{ n }}</p>").unwrap();
        let engine = StateTemplate::builder(env)
            .keys(KeyRing::generate().unwrap())
            .build()
            .unwrap();
        Live::new(engine)
    }

    /// What a browser sends back: the name=value part of a Set-Cookie.
    fn sent_back(set_cookie: &str) -> String {
        set_cookie.split(';').next().unwrap().to_owned()
    }

    #[tokio::test]
    async fn a_browser_keeps_its_session_by_its_cookie() {
        let live = live();
        let first = live
            .engine()
            .new_session("p.html", &serde_json::json!({"n": 1}))
            .await
            .unwrap();
        let set = live.set_cookie(&first);
        assert!(set.ends_with("; Path=/; HttpOnly; SameSite=Lax"), "{set}");
        // Another tab: the cookie among others names the same session.
        let header = format!("theme=dark; {}; other=1", sent_back(&set));
        let again = live
            .cookie_session(Some(&header))
            .await
            .expect("the session");
        assert_eq!(again.session_id, first.session_id);
        assert!(again.html.contains(">1<"), "{}", again.html);
        // No cookie, another cookie, a tampered token, a closed session.
        assert!(live.cookie_session(None).await.is_none());
        assert!(live.cookie_session(Some("theme=dark")).await.is_none());
        let tampered = header.replace(&first.token[..8], "AAAAAAAA");
        assert!(live.cookie_session(Some(&tampered)).await.is_none());
        assert!(live.cookie_session(Some("st=garbage")).await.is_none());
        live.engine()
            .session_unchecked(&first.session_id)
            .unwrap()
            .close()
            .await
            .unwrap();
        assert!(live.cookie_session(Some(&header)).await.is_none());
    }

    #[tokio::test]
    async fn the_cookie_name_and_secure_are_settings() {
        let live = live().session_cookie("app_sid", true).unwrap();
        let i = live
            .engine()
            .new_session("p.html", &serde_json::json!({"n": 2}))
            .await
            .unwrap();
        let set = live.set_cookie(&i);
        assert!(
            set.starts_with("app_sid=") && set.ends_with("; Secure"),
            "{set}"
        );
        let back = sent_back(&set);
        assert!(live.cookie_session(Some(&back)).await.is_some());
        // The default name no longer counts.
        let default_named = back.replacen("app_sid=", "st=", 1);
        assert!(live.cookie_session(Some(&default_named)).await.is_none());
        for bad in ["", "a b", "a;b", "é"] {
            assert!(
                Live::session_cookie(self::live(), bad, false).is_err(),
                "{bad:?}"
            );
        }
    }
}

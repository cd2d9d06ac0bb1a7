//! The mesh as a picture, pure (no I/O): [`dot`] writes Graphviz DOT for `weftd graph`, [`page`]
//! the self-contained status page (HTML5 with inline SVG and CSS, no JavaScript, no external
//! assets).
//!
//! Both draw a star: this node, and one edge from it to each peer coloured by the peer's health
//! (up green, down red, unknown grey) and labelled with the round-trip time; refused peers are
//! dashed orange with the reason. Every string from the snapshot is escaped for where it lands
//! (DOT quoted strings, HTML text and attributes).
//!
//! The page has stable hooks for browser tests: `<g class="self" id="self" data-node=NAME>`, per
//! peer `<g class="peer STATE" id="peer-NAME" data-node=NAME data-health=STATE>`, per refused
//! peer `<g class="peer refused" id="refused-NAME" data-node=NAME>`, and table rows
//! `<tr class="peer-row STATE" data-node=NAME>` (`STATE` `refused` for refused peers); each SVG
//! group has a `<title>` (the hover text).

use std::f64::consts::{PI, TAU};
use std::fmt::Write as _;

use super::render::{age, cidrs, endpoint, one_line, rtt};
use super::snapshot::{HealthState, PeerView, RefusedView, Snapshot};

/// Edge and outline colour of a peer that answers.
const UP: &str = "#2e7d32";
/// ... that does not.
const DOWN: &str = "#c62828";
/// ... that is not known either way.
const UNKNOWN: &str = "#757575";
/// ... of a refused peer.
const REFUSED: &str = "#ef6c00";

/// The colour of a peer in `state`.
fn colour(state: HealthState) -> &'static str {
    match state {
        HealthState::Up => UP,
        HealthState::Down => DOWN,
        HealthState::Unknown => UNKNOWN,
    }
}

/// `weftd graph`: the mesh as an undirected Graphviz graph `weft`, laid out by `twopi` around
/// this node (node id `self`). Peers are `peer0`, `peer1`, ... and refused peers `refused0`, ...
/// in snapshot order, each labelled `name\nCIDR\n...`; edges go from `self` to each.
pub fn dot(s: &Snapshot) -> String {
    let mut out = String::from("graph weft {\n");
    out.push_str(
        "  graph [layout=twopi, root=\"self\", overlap=false, fontname=\"sans-serif\"];\n",
    );
    out.push_str("  node [shape=box, style=rounded, fontname=\"sans-serif\", fontsize=10];\n");
    out.push_str("  edge [fontname=\"sans-serif\", fontsize=9];\n");
    let label = dot_label(&s.node, &own_cidrs(s));
    let _ = writeln!(
        out,
        "  \"self\" [label={label}, style=\"rounded,bold\", tooltip=\"this node\"];"
    );
    for (i, p) in s.peers.iter().enumerate() {
        dot_peer(&mut out, i, p);
    }
    for (i, r) in s.refused.iter().enumerate() {
        dot_refused(&mut out, i, r);
    }
    out.push_str("}\n");
    out
}

/// This node's pod CIDRs, one string each; none without a lease.
fn own_cidrs(s: &Snapshot) -> Vec<String> {
    let nets = s.lease.iter().flat_map(|l| &l.pod_cidrs);
    nets.map(|n| n.to_string()).collect()
}

/// Peer `i` as DOT node `peer{i}` and its edge from `self`, in its health's colour with the RTT.
fn dot_peer(out: &mut String, i: usize, p: &PeerView) {
    let nets: Vec<String> = p.pod_cidrs.iter().map(|n| n.to_string()).collect();
    let (label, colour) = (dot_label(&p.node, &nets), colour(p.health.state));
    let tooltip = format!("{}, {}", p.health.state, endpoint(p.endpoint, p.port));
    let _ = writeln!(
        out,
        "  \"peer{i}\" [label={label}, color=\"{colour}\", tooltip={}];",
        dot_quote(&tooltip)
    );
    let rtt = p
        .health
        .rtt_us
        .map(|us| format!(", label={}", dot_quote(&rtt(us))));
    let rtt = rtt.unwrap_or_default();
    let _ = writeln!(out, "  \"self\" -- \"peer{i}\" [color=\"{colour}\"{rtt}];");
}

/// Refused peer `i` as DOT node `refused{i}`, dashed orange with the reason as its tooltip, and
/// its dashed edge from `self`.
fn dot_refused(out: &mut String, i: usize, r: &RefusedView) {
    let label = dot_label(&r.node, &["refused".to_string()]);
    let tooltip = dot_quote(&one_line(&r.reason));
    let _ = writeln!(
        out,
        "  \"refused{i}\" [label={label}, style=\"rounded,dashed\", color=\"{REFUSED}\", \
         fontcolor=\"{REFUSED}\", tooltip={tooltip}];"
    );
    let _ = writeln!(
        out,
        "  \"self\" -- \"refused{i}\" [style=dashed, color=\"{REFUSED}\"];"
    );
}

/// A DOT label: the name, then each of `lines`, separated by DOT's `\n`; quoted.
fn dot_label(name: &str, lines: &[String]) -> String {
    let mut text = dot_escape(&one_line(name));
    for line in lines {
        text.push_str("\\n");
        text.push_str(&dot_escape(line));
    }
    format!("\"{text}\"")
}

/// `s` as a DOT quoted string.
fn dot_quote(s: &str) -> String {
    format!("\"{}\"", dot_escape(s))
}

/// `s` escaped for the inside of a DOT quoted string: `\` and `"` take a backslash (so that
/// Graphviz reads no `\N`, `\l`, ... escapes of its own), newlines are written as `\n`.
fn dot_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The status page: a self-contained HTML5 document (inline CSS and SVG, no JavaScript, no
/// external assets) with a header (node, backend, store, lease, when the snapshot was taken, in
/// UTC), the mesh as a picture (this node at the centre, peers evenly on a circle around it) and
/// tables of the peers and the refused peers. It reloads itself every `refresh_secs` seconds;
/// 0 never.
pub fn page(s: &Snapshot, refresh_secs: u32) -> String {
    let title = html(&format!("weft: {}", s.node));
    let mut out = String::with_capacity(2_048 + 1_024 * (s.peers.len() + s.refused.len()));
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    if refresh_secs > 0 {
        let _ = writeln!(
            out,
            "<meta http-equiv=\"refresh\" content=\"{refresh_secs}\">"
        );
    }
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(
        out,
        "<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>"
    );
    header(&mut out, s);
    svg(&mut out, s);
    peer_table(&mut out, s);
    refused_table(&mut out, s);
    out.push_str("</body>\n</html>\n");
    out
}

/// The page's style: system fonts, the health colours, text with a white halo over the lines.
const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:1.5em;color:#212121}
h1{font-size:1.4em;margin:0 0 .4em}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:0 0 1em}
dt{font-weight:600}dd{margin:0}
svg{display:block;width:100%;max-width:56em;height:auto;margin:0 auto 1.5em}
svg text{font-size:11px;paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
.self text{font-weight:600}
table{border-collapse:collapse;margin:0 0 1.5em}
th,td{text-align:left;padding:.25em .8em;border-bottom:1px solid #e0e0e0}
td.up{color:#2e7d32}td.down{color:#c62828;font-weight:600}td.unknown{color:#757575}
tr.refused td{color:#ef6c00}
";

/// The header: the node and what it runs.
fn header(out: &mut String, s: &Snapshot) {
    let backend = match &s.backend_impl {
        Some(how) => format!("{} ({how})", s.backend),
        None => s.backend.clone(),
    };
    let lease = match (&s.lease, &s.waiting) {
        (Some(l), _) => cidrs(&l.pod_cidrs),
        (None, Some(why)) => format!("none, waiting: {why}"),
        (None, None) => "none".to_string(),
    };
    let _ = writeln!(out, "<h1>weft: {}</h1>\n<dl>", html(&s.node));
    for (term, value) in [
        ("Backend", backend),
        ("Store", s.store.clone()),
        ("Lease", lease),
        ("Version", s.version.clone()),
        ("Generated", utc(s.taken_at)),
    ] {
        let _ = writeln!(out, "<dt>{term}</dt><dd>{}</dd>", html(&value));
    }
    out.push_str("</dl>\n");
}

/// Where the picture puts things, in SVG user units.
struct Layout {
    /// The picture is a square `size` wide, this node at its centre.
    size: f64,
    /// The circle the peers are on.
    radius: f64,
    /// A peer's circle; this node's is half again as large.
    node_r: f64,
    /// Labels run outwards along the spokes (many peers) rather than under each circle.
    radial: bool,
}

/// Peers above which labels turn radial (under each circle they would overlap).
const RADIAL_ABOVE: usize = 12;

/// The layout for `n` nodes around this one, whose longest label is `longest` characters: the
/// circle grows with `n` so that neighbours stay a label's height (radial) or width apart.
fn layout(n: usize, longest: usize) -> Layout {
    let radial = n > RADIAL_ABOVE;
    let node_r = if n > 60 { 6.0 } else { 14.0 };
    let spacing = if radial { 16.0 } else { 120.0 };
    let radius = match n {
        0 => 0.0,
        _ => (n as f64 * spacing / TAU).max(150.0),
    };
    let label = longest as f64 * 6.5;
    let margin = if radial {
        node_r + 8.0 + label.max(60.0)
    } else {
        node_r + 60.0 + label / 2.0
    };
    Layout {
        size: 2.0 * (radius + margin),
        radius,
        node_r,
        radial,
    }
}

/// A point of the picture, and the angle (radians, clockwise from 3 o'clock) it is at seen from
/// the centre.
#[derive(Clone, Copy)]
struct Spot {
    x: f64,
    y: f64,
    angle: f64,
}

impl Layout {
    /// The centre, where this node is.
    fn centre(&self) -> Spot {
        let c = self.size / 2.0;
        Spot {
            x: c,
            y: c,
            angle: 0.0,
        }
    }

    /// The `i`th of `n` places on the circle, clockwise from 12 o'clock.
    fn spot(&self, i: usize, n: usize) -> Spot {
        let angle = -PI / 2.0 + TAU * i as f64 / n as f64;
        let c = self.centre();
        Spot {
            x: c.x + self.radius * angle.cos(),
            y: c.y + self.radius * angle.sin(),
            angle,
        }
    }
}

/// The picture: a group per peer and refused peer (spoke, circle, label), this node's on top.
fn svg(out: &mut String, s: &Snapshot) {
    let n = s.peers.len() + s.refused.len();
    let longest = s
        .peers
        .iter()
        .map(|p| label_len(&p.node, &cidrs(&p.pod_cidrs)));
    let longest = longest
        .chain(s.refused.iter().map(|r| label_len(&r.node, "refused")))
        .max()
        .unwrap_or(0);
    let lay = layout(n, longest);
    let _ = writeln!(
        out,
        "<svg viewBox=\"0 0 {size:.0} {size:.0}\" role=\"img\" aria-label=\"the mesh\">",
        size = lay.size
    );
    for (i, p) in s.peers.iter().enumerate() {
        peer_group(out, &lay, lay.spot(i, n), p);
    }
    for (i, r) in s.refused.iter().enumerate() {
        refused_group(out, &lay, lay.spot(s.peers.len() + i, n), r);
    }
    self_group(out, &lay, s);
    out.push_str("</svg>\n");
}

/// How many characters a label takes: radial labels are one line, `name  CIDRs`.
fn label_len(name: &str, second: &str) -> usize {
    name.chars().count() + 2 + second.chars().count()
}

/// One programmed peer: spoke and outline in its health's colour.
fn peer_group(out: &mut String, lay: &Layout, at: Spot, p: &PeerView) {
    let (name, state, colour) = (html(&p.node), p.health.state, colour(p.health.state));
    let nets = cidrs(&p.pod_cidrs);
    let rtt = p.health.rtt_us.map_or("-".into(), rtt);
    let _ = writeln!(
        out,
        "<g class=\"peer {state}\" id=\"peer-{name}\" data-node=\"{name}\" data-health=\"{state}\">\
         \n<title>{name}\n{}\n{state}, RTT {rtt}</title>",
        html(&nets)
    );
    spoke(out, lay, at, colour, false);
    let _ = writeln!(
        out,
        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{}\" fill=\"#fff\" stroke=\"{colour}\" stroke-width=\"2\"/>",
        at.x, at.y, lay.node_r
    );
    let lines: Vec<String> = p.pod_cidrs.iter().map(|n| n.to_string()).collect();
    label(out, lay, at, &p.node, &lines);
    out.push_str("</g>\n");
}

/// One refused peer: dashed orange, the reason in its hover text.
fn refused_group(out: &mut String, lay: &Layout, at: Spot, r: &RefusedView) {
    let name = html(&r.node);
    let _ = writeln!(
        out,
        "<g class=\"peer refused\" id=\"refused-{name}\" data-node=\"{name}\">\
         \n<title>{name}\nrefused: {}</title>",
        html(&r.reason)
    );
    spoke(out, lay, at, REFUSED, true);
    let _ = writeln!(
        out,
        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{}\" fill=\"#fff\" stroke=\"{REFUSED}\" \
         stroke-width=\"2\" stroke-dasharray=\"4 3\"/>",
        at.x, at.y, lay.node_r
    );
    label(out, lay, at, &r.node, &["refused".to_string()]);
    out.push_str("</g>\n");
}

/// This node, at the centre.
fn self_group(out: &mut String, lay: &Layout, s: &Snapshot) {
    let name = html(&s.node);
    let nets = own_cidrs(s);
    let _ = writeln!(
        out,
        "<g class=\"self\" id=\"self\" data-node=\"{name}\">\n<title>{name}\n{}\nthis node</title>",
        html(&nets.join(", "))
    );
    let c = lay.centre();
    let _ = writeln!(
        out,
        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{}\" fill=\"#e3f2fd\" stroke=\"#1565c0\" stroke-width=\"3\"/>",
        c.x,
        c.y,
        lay.node_r * 1.5
    );
    let under = Layout {
        radial: false,
        node_r: lay.node_r * 1.5,
        ..*lay
    };
    label(out, &under, c, &s.node, &nets);
    out.push_str("</g>\n");
}

/// The line from the centre to a node's circle.
fn spoke(out: &mut String, lay: &Layout, to: Spot, colour: &str, dashed: bool) {
    let c = lay.centre();
    let dash = if dashed {
        " stroke-dasharray=\"6 4\""
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>",
        c.x, c.y, to.x, to.y
    );
}

/// The height of a line of a label (11 px text), in SVG user units.
const LINE: f64 = 13.2;

/// A node's name and `lines` (its CIDRs): stacked under (or above) the circle, or on one line running
/// outwards along the spoke (turned to read left to right on the left half).
fn label(out: &mut String, lay: &Layout, at: Spot, name: &str, lines: &[String]) {
    if !lay.radial {
        // Under the circle, or above it on the upper part of the circle (off the spoke).
        let y = if at.angle.sin() < -0.3 {
            at.y - lay.node_r - 6.0 - LINE * lines.len() as f64
        } else {
            at.y + lay.node_r + LINE
        };
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{y:.1}\" text-anchor=\"middle\">",
            at.x
        );
        let _ = write!(out, "<tspan x=\"{:.1}\">{}</tspan>", at.x, html(name));
        for line in lines {
            let _ = write!(
                out,
                "<tspan x=\"{:.1}\" dy=\"1.2em\">{}</tspan>",
                at.x,
                html(line)
            );
        }
        out.push_str("</text>\n");
        return;
    }
    let gap = lay.node_r + 6.0;
    let (x, y) = (at.x + gap * at.angle.cos(), at.y + gap * at.angle.sin());
    let left = at.angle.cos() < -1e-9;
    let degrees = at.angle.to_degrees() + if left { 180.0 } else { 0.0 };
    let anchor = if left { "end" } else { "start" };
    let _ = writeln!(
        out,
        "<text x=\"{x:.1}\" y=\"{y:.1}\" transform=\"rotate({degrees:.1} {x:.1} {y:.1})\" \
         text-anchor=\"{anchor}\" dominant-baseline=\"middle\">{}  {}</text>",
        html(name),
        html(&lines.join(", "))
    );
}

/// The table of programmed peers, or a line saying there are none.
fn peer_table(out: &mut String, s: &Snapshot) {
    out.push_str("<h2>Peers</h2>\n");
    if s.peers.is_empty() {
        out.push_str("<p class=\"empty\">No peers.</p>\n");
        return;
    }
    out.push_str(
        "<table class=\"peers\">\n<thead><tr><th>Node</th><th>Pod CIDRs</th><th>Endpoint</th>\
         <th>Health</th><th>RTT</th><th>Last reply</th></tr></thead>\n<tbody>\n",
    );
    for p in &s.peers {
        let state = p.health.state;
        let last = p
            .health
            .last_reply
            .map_or("never".into(), |t| format!("{} ago", age(t, s.taken_at)));
        let _ = writeln!(
            out,
            "<tr class=\"peer-row {state}\" data-node=\"{}\"><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"{state}\">{state}</td><td>{}</td><td>{last}</td></tr>",
            html(&p.node),
            html(&p.node),
            html(&cidrs(&p.pod_cidrs)),
            endpoint(p.endpoint, p.port),
            p.health.rtt_us.map_or("-".into(), rtt),
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

/// The table of refused peers, if any.
fn refused_table(out: &mut String, s: &Snapshot) {
    if s.refused.is_empty() {
        return;
    }
    out.push_str(
        "<h2>Refused</h2>\n<table class=\"refused\">\n\
         <thead><tr><th>Node</th><th>Reason</th></tr></thead>\n<tbody>\n",
    );
    for r in &s.refused {
        let name = html(&r.node);
        let _ = writeln!(
            out,
            "<tr class=\"peer-row refused\" data-node=\"{name}\"><td>{name}</td><td>{}</td></tr>",
            html(&r.reason)
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

/// `s` escaped for HTML text and quoted attributes: `& < > " '`.
fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Unix seconds as `YYYY-MM-DD hh:mm:ss UTC` (proleptic Gregorian, from days since the epoch).
fn utc(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, shifted so that eras start on 0000-03-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::inspect::render::tests::{snapshot, NOW};

    /// The SVG group of the node with hook id `id`, from its opening tag to its `</g>`.
    fn group<'a>(page: &'a str, id: &str) -> &'a str {
        let start = page
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no {id}"));
        let start = page[..start].rfind("<g ").unwrap();
        let end = start + page[start..].find("</g>").unwrap();
        &page[start..end]
    }

    /// How many times each `id="..."` occurs.
    fn ids(page: &str) -> HashMap<&str, usize> {
        let mut ids = HashMap::new();
        for part in page.split(" id=\"").skip(1) {
            *ids.entry(&part[..part.find('"').unwrap()]).or_default() += 1;
        }
        ids
    }

    /// Braces outside DOT quoted strings balance, and every quoted string is closed.
    fn assert_dot_well_formed(dot: &str) {
        let (mut depth, mut quoted, mut escaped) = (0i32, false, false);
        for c in dot.chars() {
            match (quoted, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (_, false, '"') => quoted = !quoted,
                (false, _, '{') => depth += 1,
                (false, _, '}') => depth -= 1,
                _ => {}
            }
            assert!(depth >= 0, "unbalanced braces:\n{dot}");
        }
        assert!(!quoted, "an unclosed string:\n{dot}");
        assert_eq!(depth, 0, "unbalanced braces:\n{dot}");
    }

    /// A mesh of `n` peers, every fourth down, every fourth refused as well.
    fn big(n: usize) -> Snapshot {
        let mut s = snapshot();
        let template = s.peers[0].clone();
        s.peers = (0..n)
            .map(|i| {
                let mut p = template.clone();
                p.node = format!("node-{i}");
                p.pod_cidrs = vec![format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap()];
                if i % 4 == 1 {
                    p.health.state = HealthState::Down;
                }
                p
            })
            .collect();
        s.refused = (0..n / 4)
            .map(|i| RefusedView {
                node: format!("bad-{i}"),
                reason: "overlaps".into(),
                endpoint: None,
            })
            .collect();
        s
    }

    #[test]
    fn dot_has_every_peer_and_an_edge_to_each() {
        let s = snapshot();
        let out = dot(&s);
        assert!(out.starts_with("graph weft {\n") && out.ends_with("}\n"));
        assert_dot_well_formed(&out);
        assert!(out.contains("\"self\" [label=\"node-a\\n10.244.1.0/24\\nfd00:10:244:1::/64\""));
        for (i, p) in s.peers.iter().enumerate() {
            assert!(
                out.contains(&format!("\"peer{i}\" [label=\"{}\\n", p.node)),
                "{}",
                p.node
            );
            assert_eq!(
                out.matches(&format!("\"self\" -- \"peer{i}\" [")).count(),
                1
            );
        }
        assert!(out.contains("\"self\" -- \"peer0\" [color=\"#2e7d32\", label=\"0.21 ms\"];"));
        assert!(
            out.contains("\"self\" -- \"peer1\" [color=\"#c62828\"];"),
            "down is red"
        );
        assert!(
            out.contains("\"self\" -- \"peer2\" [color=\"#757575\"];"),
            "unknown is grey"
        );
        assert!(out.contains("\"self\" -- \"refused0\" [style=dashed, color=\"#ef6c00\"];"));
    }

    #[test]
    fn dot_escapes_hostile_names_and_reasons() {
        let out = dot(&snapshot());
        assert_dot_well_formed(&out);
        assert!(out.contains("label=\"evil\\\"><script>alert('x')</script>\\nrefused\""));
        assert!(out.contains(
            "tooltip=\"pod CIDR 10.244.2.0/24 \\\"overlaps\\\" node-b's & \\\\ <b>\\\\nline two\""
        ));
    }

    #[test]
    fn page_has_every_peer_with_its_hooks() {
        let s = snapshot();
        let out = page(&s, 10);
        assert!(out.starts_with("<!DOCTYPE html>") && out.ends_with("</html>\n"));
        assert!(out.contains("<meta http-equiv=\"refresh\" content=\"10\">"));
        assert!(
            group(&out, "self").starts_with("<g class=\"self\" id=\"self\" data-node=\"node-a\">")
        );
        for p in &s.peers {
            let (name, state) = (&p.node, p.health.state);
            let g = group(&out, &format!("peer-{name}"));
            assert!(g.starts_with(&format!(
                "<g class=\"peer {state}\" id=\"peer-{name}\" data-node=\"{name}\" data-health=\"{state}\">"
            )));
            assert!(g.contains(&format!("<title>{name}\n")) && g.contains("<line "));
            assert!(out.contains(&format!(
                "<tr class=\"peer-row {state}\" data-node=\"{name}\">"
            )));
        }
        let up = group(&out, "peer-node-b");
        assert!(up.contains("up, RTT 0.21 ms</title>") && up.contains("stroke=\"#2e7d32\""));
        assert!(out.contains("<td>1s ago</td>") && out.contains("<td>2h ago</td>"));
        assert!(out.contains("<dd>2023-11-14 22:13:20 UTC</dd>"));
    }

    #[test]
    fn page_shows_a_down_peer_in_red() {
        let out = page(&snapshot(), 10);
        let down = group(&out, "peer-node-c");
        assert!(down.contains("data-health=\"down\"") && down.contains("class=\"peer down\""));
        assert!(down.contains("<line ") && down.contains("stroke=\"#c62828\""));
        assert!(!down.contains(UP) && !down.contains(UNKNOWN));
        assert!(out.contains("<td class=\"down\">down</td>"));
    }

    #[test]
    fn page_escapes_hostile_names_and_reasons() {
        let out = page(&snapshot(), 10);
        let name = "evil&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;";
        let g = group(&out, &format!("refused-{name}"));
        assert!(g.starts_with(&format!(
            "<g class=\"peer refused\" id=\"refused-{name}\" data-node=\"{name}\">"
        )));
        assert!(
            g.contains("&quot;overlaps&quot; node-b&#39;s &amp; \\ &lt;b&gt;\nline two</title>")
        );
        assert!(g.contains("stroke-dasharray"));
        assert!(out.contains(&format!(
            "<tr class=\"peer-row refused\" data-node=\"{name}\">"
        )));
        assert!(!out.contains("<script") && !out.contains("<b>") && !out.contains("evil\""));
    }

    #[test]
    fn page_is_self_contained() {
        let out = page(&snapshot(), 10);
        let lower = out.to_lowercase();
        for banned in [
            "<script",
            "http://",
            "https://",
            "javascript:",
            " src=",
            " href=",
            "@import",
            "url(",
        ] {
            assert!(!lower.contains(banned), "{banned} in the page");
        }
        assert!(
            !page(&snapshot(), 0).contains("http-equiv"),
            "0 never reloads"
        );
    }

    #[test]
    fn an_empty_mesh_still_renders() {
        let mut s = snapshot();
        s.peers.clear();
        s.refused.clear();
        s.lease = None;
        let out = dot(&s);
        assert_dot_well_formed(&out);
        assert!(out.contains("\"self\" [label=\"node-a\""));
        assert!(!out.contains("--"));
        let out = page(&s, 5);
        assert!(out.contains("<g class=\"self\" id=\"self\" data-node=\"node-a\">"));
        assert!(out.contains("No peers.") && !out.contains("class=\"peer "));
        assert!(out.contains("<svg viewBox=\"0 0 "));
    }

    #[test]
    fn a_thousand_peers_render_quickly_and_once_each() {
        let s = big(1000);
        let start = Instant::now();
        let (graph, html) = (dot(&s), page(&s, 10));
        let took = start.elapsed();
        assert!(took < Duration::from_millis(200), "took {took:?}");
        let ids = ids(&html);
        for p in &s.peers {
            assert_eq!(
                ids.get(format!("peer-{}", p.node).as_str()),
                Some(&1),
                "{}",
                p.node
            );
        }
        for r in &s.refused {
            assert_eq!(
                ids.get(format!("refused-{}", r.node).as_str()),
                Some(&1),
                "{}",
                r.node
            );
        }
        assert_eq!(graph.matches("\"self\" -- \"peer").count(), 1000);
        assert_eq!(graph.matches("\"self\" -- \"refused").count(), 250);
        assert_dot_well_formed(&graph);
        assert!(html.contains("transform=\"rotate("), "labels turn radial");
    }

    #[test]
    fn the_circle_grows_with_the_mesh() {
        let small = layout(4, 20);
        let big = layout(1250, 20);
        assert!(!small.radial && big.radial);
        let gap = |l: &Layout, n: usize| TAU * l.radius / n as f64;
        assert!(gap(&big, 1250) >= 16.0, "neighbours a label's height apart");
        assert!(gap(&small, 4) >= 120.0, "neighbours a label's width apart");
        assert!(big.size > 2.0 * big.radius && big.size < 10_000.0);
        assert_eq!(layout(0, 0).radius, 0.0);
    }

    #[test]
    fn utc_by_hand() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(NOW), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }
}

// Follows a machine page live: the server's event stream sends the timeline rows, log
// lines and container states that came after what the page shows. Built with
// textContent only: nothing the node sends becomes markup.
"use strict";
// The fleet: the same page, fetched again 5 s after the last answer (not while the tab is
// hidden); its table and counts (rendered and escaped by the server) replace the ones
// shown. A session gone: the login.
(function () {
  const body = document.getElementById("fleet-body");
  if (!body || !window.fetch || !window.DOMParser) return;
  const note = document.getElementById("fleet-live");
  const following = "Updated every 5 s.";
  note.textContent = following;
  async function refresh() {
    if (!document.hidden) {
      try {
        const r = await fetch(window.location.href, { credentials: "same-origin", cache: "no-store" });
        if (r.redirected || r.status === 401 || r.status === 403) { window.location.reload(); return; }
        if (!r.ok) throw new Error(String(r.status));
        const doc = new DOMParser().parseFromString(await r.text(), "text/html");
        for (const id of ["fleet-body", "fleet-count"]) {
          const fresh = doc.getElementById(id);
          const old = document.getElementById(id);
          if (fresh && old) old.replaceWith(document.importNode(fresh, true));
        }
        // The state filter's counts, leaving the operator's choice alone.
        const fresh = doc.getElementById("fleet-states");
        const shown = document.getElementById("fleet-states");
        if (fresh && shown) {
          for (const o of shown.options) {
            const f = Array.from(fresh.options).find(x => x.value === o.value);
            if (f) o.textContent = f.textContent;
          }
        }
        note.textContent = following;
      } catch (e) {
        note.textContent = "Reconnecting…";
      }
    }
    setTimeout(refresh, 5000);
  }
  setTimeout(refresh, 5000);
})();

// A machine page.
(function () {
  const page = document.getElementById("machine");
  if (!page || !window.EventSource) return;
  const live = document.getElementById("live");
  const params = new URLSearchParams({ boot: page.dataset.boot, rows: page.dataset.rows, last: page.dataset.last, log: page.dataset.log });
  const source = new EventSource("/machines/" + encodeURIComponent(page.dataset.mac) + "/live?" + params);
  live.textContent = "Following live.";
  // The newest lines in view, as a terminal shows them.
  const logBox = document.getElementById("log");
  logBox.scrollTop = logBox.scrollHeight;

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }
  function badge(td, state, bad) {
    td.textContent = "";
    const s = document.createElement("span");
    s.className = "state " + state + (bad ? "" : " fine");
    s.textContent = state;
    td.appendChild(s);
  }

  source.addEventListener("update", function (e) {
    const u = JSON.parse(e.data);
    if (u.reload) { window.location.reload(); return; }
    const state = document.getElementById("state");
    state.textContent = u.state;
    state.className = "state " + u.state;
    const timeline = document.querySelector("#timeline tbody");
    for (const r of u.rows) {
      if (!timeline) break;
      const tr = document.createElement("tr");
      tr.dataset.kind = r.kind;
      if (r.bad) tr.className = "bad";
      cell(tr, (r.tMs / 1000).toFixed(1), "num");
      cell(tr, String(r.deltaMs), "num");
      cell(tr, r.kind);
      cell(tr, r.source);
      cell(tr, r.text);
      timeline.appendChild(tr);
    }
    for (const c of u.containers) {
      const tr = document.querySelector('#containers tr[data-name="' + CSS.escape(c.name) + '"]');
      if (!tr) continue;
      tr.className = c.bad ? "bad" : "";
      badge(tr.children[2], c.state, c.bad);
      tr.children[3].textContent = c.detail;
    }
    const log = document.getElementById("log");
    const filter = log.dataset.filter;
    const follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    for (const l of u.log) {
      // As the server filters: the source itself or what is under it.
      if (filter && l.source !== filter && !l.source.startsWith(filter + "/")) continue;
      const div = document.createElement("div");
      div.className = "line";
      div.dataset.source = l.source;
      const src = document.createElement("span");
      src.className = "src";
      src.textContent = l.source;
      div.appendChild(src);
      div.appendChild(document.createTextNode(" " + l.text));
      log.appendChild(div);
    }
    if (follow) log.scrollTop = log.scrollHeight;
  });
  source.onerror = function () {
    // Refused (no session: the server restarted, or it expired while away): the browser
    // will not try again; the page goes to the login.
    if (source.readyState === EventSource.CLOSED) { window.location.reload(); return; }
    live.textContent = "Reconnecting…";
  };
  source.onopen = function () { live.textContent = "Following live."; };
})();

// Switchboard pages: the few things htmx does not do for us. Served from our
// own origin under a strict CSP (no inline script, no eval). Every change goes
// through the JSON API with the session cookie and the CSRF token; failures
// are said in words in the status line.
(function () {
  "use strict";

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const csrf = () => { const m = $('meta[name="csrf-token"]'); return m ? m.content : ""; };

  // --- status line ---------------------------------------------------------------
  let statusTimer = null;
  // What the page says on its own (an offer came, the customer is back)
  // while an error shows: it waits until the error is put away.
  const waiting = [];
  // The status line empties; focus that was on it goes back to where it
  // came from (never to the page's top). A note that waited comes next.
  function clearStatus(back) {
    const el = $("#status");
    if (!el) return;
    const hadFocus = el.contains(document.activeElement);
    el.textContent = "";
    el.className = "status";
    delete el.dataset.announced;
    if (hadFocus && back && back.isConnected) back.focus({ preventScroll: true });
    const next = waiting.shift();
    if (next) { show(next.text, next.kind); el.dataset.announced = "1"; }
  }
  // Said because of something that happened elsewhere, not because of the
  // agent's own action: the error of a failed action stays until the agent
  // dismisses it or acts again, so this waits behind it. (What was itself
  // announced, such as "the customer left", gives way to the news after it.)
  // `about` names the task the news is about: news of a task whose offer
  // has since ended (taken, withdrawn, accepted in another tab) is dropped.
  function announce(text, kind, about) {
    const el = $("#status");
    if (el && el.classList.contains("status-error") && !el.dataset.announced) {
      waiting.push({ text, kind, about });
      if (waiting.length > 5) waiting.shift();
      return;
    }
    show(text, kind);
    if (el) el.dataset.announced = "1";
  }
  function forget(task) {
    for (let i = waiting.length - 1; i >= 0; i--) if (task && waiting[i].about === task) waiting.splice(i, 1);
  }
  // The SSE extension hands one message to every element that listens for
  // its kind (the offers, the queue, the list…): each is acted on once.
  const seenMessages = new WeakSet();
  function firstTime(e) {
    if (!e.detail || typeof e.detail !== "object") return true;
    if (seenMessages.has(e.detail)) return false;
    seenMessages.add(e.detail);
    return true;
  }
  // What the agent's own action says: news that waited behind an error is
  // stale by now (an offer since accepted, a pause since ended), dropped.
  function say(text, kind) {
    waiting.length = 0;
    show(text, kind);
  }
  function show(text, kind) {
    const el = $("#status");
    if (!el) return;
    const before = document.activeElement;
    delete el.dataset.announced;
    el.textContent = text;
    el.className = "status status-" + (kind || "info");
    el.setAttribute("role", kind === "error" ? "alert" : "status");
    clearTimeout(statusTimer);
    if (kind !== "error") { statusTimer = setTimeout(() => clearStatus(), 6000); return; }
    // An error stays until it is read: it floats over the page, so it can be put away.
    const close = document.createElement("button");
    close.type = "button";
    close.className = "small dismiss";
    close.textContent = "Dismiss";
    close.addEventListener("click", () => clearStatus(before));
    el.append(" ", close);
  }

  // Signing in or out ends this page's session on purpose: the page then
  // goes where that form leads, not to the sign-in page a dropped stream or
  // a refused request would send it to (which could cut the form's answer,
  // and its cookie, short).
  let leaving = false;
  document.addEventListener("submit", (e) => {
    const action = e.target && e.target.getAttribute && e.target.getAttribute("action");
    if (action === "/sign-in" || action === "/sign-out") leaving = true;
  }, true);
  function signInAgain() {
    if (leaving) return;
    window.location.assign("/sign-in?next=" + encodeURIComponent(location.pathname + location.search));
  }
  // The same for htmx's own bounce: a request of this page (a list still
  // loading) answered after the form ended the session comes back 401 with
  // HX-Redirect, and htmx would navigate at once, cancelling the form's
  // navigation before its cookie is stored. htmx navigates through
  // htmx.location (HX-Redirect, HX-Refresh) whichever element asked, one
  // the page has since replaced included: the guard sits there.
  if (window.htmx) {
    htmx.location = {
      get href() { return location.href; },
      set href(url) { if (!leaving) location.href = url; },
      reload() { if (!leaving) location.reload(); },
    };
  }

  // --- the API --------------------------------------------------------------------
  // `message` is said to the agent; `raw` is the API's own message (written
  // for integrators, naming ids), kept for the page's own checks.
  class ApiError extends Error {
    constructor(status, code, message, body, raw) { super(message); this.status = status; this.code = code; this.body = body; this.raw = raw || message; }
  }

  // --- errors in words ---------------------------------------------------------------
  // The API names what failed by its id ("draft 'drf_…' is at version 8",
  // "agent 'bob' is offline"); the page says the common cases in sentences,
  // with the names it shows (the transfer lists', the open session's).
  function nameIn(selector, id) {
    const o = $$(selector).find((x) => x.value === id);
    return o ? (o.dataset.name || o.textContent).trim() : null;
  }
  function agentName(id) { return nameIn('select[name="agent"] option', id); }
  function serviceName(id) {
    const open = $("#detail .session-detail");
    if (open && open.dataset.service === id && open.dataset.serviceName) return open.dataset.serviceName;
    return nameIn('select[name="service"] option', id);
  }
  const notFoundWords = {
    session: "That session could not be opened: it is not one of yours, or it no longer exists.",
    draft: "This draft no longer exists: it was sent or discarded in another tab or window. Reload the page.",
    task: "This task no longer exists, or it is no longer yours to see. Reload the page.",
    message: "This mail is no longer there. Reload the page.",
    attachment: "This attachment is no longer there. Reload the page.",
  };
  function sizeWords(text) {
    const m = /limit of ([\d.]+) (MiB|KiB|bytes)/.exec(text || "");
    return m ? m[1] + " " + { MiB: "MB", KiB: "KB", bytes: "bytes" }[m[2]] : null;
  }
  // `what` names the thing refused for its size (a file's name).
  function inWords(status, code, raw, what) {
    raw = (raw || "").trim();
    if (status === 413 || code === "too_large") {
      const limit = sizeWords(raw);
      return (what || "That") + " is too large" + (limit ? ": the most the server takes is " + limit : " for the server") + ".";
    }
    // The server starting (its database being migrated) says so in words.
    if (code === "starting" && raw) return raw;
    if (status === 0 || status === 429 || status >= 500 || !raw) return raw && status === 0 ? raw : describeStatus(status);
    if (status === 404) {
      const m = /^(\w+) '[^']*' not found/.exec(raw);
      return (m && notFoundWords[m[1]]) || "That is no longer there: it may have been removed or moved meanwhile. Reload the page to see what is there now.";
    }
    let text = raw
      .replace(/\bagent:? '([^']*)'/g, (_, id) => agentName(id) || "this colleague")
      .replace(/\bby '([^']*)'/g, (_, id) => "by " + (agentName(id) || "a colleague"))
      .replace(/\bservice '([^']*)'/g, (_, id) => serviceName(id) || id)
      .replace(/\b(task|draft|session|message|attachment|offer) '[^']*'/g, "this $1");
    text = text.charAt(0).toUpperCase() + text.slice(1);
    return /[.!?]$/.test(text) ? text : text + ".";
  }

  async function api(method, path, body, extra) {
    const headers = Object.assign({ "X-CSRF-Token": csrf(), Accept: "application/json" }, (extra && extra.headers) || {});
    const init = { method, headers, credentials: "same-origin" };
    if (body instanceof Blob) { init.body = body; }
    else if (body !== undefined) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    let res;
    try { res = await fetch(path, init); }
    catch (_) { throw new ApiError(0, "network", "The server could not be reached. Check your connection and try again."); }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (res.status === 401) { signInAgain(); throw new ApiError(401, "unauthorized", "You are signed out."); }
    if (!res.ok) {
      const raw = data && data.error && data.error.message ? data.error.message : "";
      const code = data && data.error ? data.error.code : "http";
      throw new ApiError(res.status, code, inWords(res.status, code, raw), data, raw || describeStatus(res.status));
    }
    return { data, etag: res.headers.get("ETag") };
  }

  function describeStatus(status) {
    if (status === 413) return "That is too large for the server.";
    if (status === 429) return "Too many requests at once; wait a moment.";
    if (status >= 500) return "The server could not do that just now (error " + status + "); it has been logged. Try again in a moment.";
    return "The server refused that (error " + status + ").";
  }

  const changed = () => document.body.dispatchEvent(new CustomEvent("sb:changed"));
  // Whether an htmx request came from the agent (a click, a form), not from
  // the page on its own (a poll, a live refresh).
  const byAgent = (e) => {
    const cfg = e.detail && e.detail.requestConfig;
    const t = cfg && cfg.triggeringEvent && cfg.triggeringEvent.type;
    return t === "click" || t === "submit" || t === "change" || t === "keyup" || t === "search";
  };

  // --- htmx: CSRF on every request, errors in words, signed-out bounce -------------
  document.addEventListener("htmx:configRequest", (e) => { e.detail.headers["X-CSRF-Token"] = csrf(); });
  document.addEventListener("htmx:responseError", (e) => {
    const xhr = e.detail.xhr;
    if (xhr.status === 401) { signInAgain(); return; }
    let raw = "", code = null;
    try { const b = JSON.parse(xhr.responseText); if (b.error && b.error.message) { raw = b.error.message; code = b.error.code; } }
    catch (_) { const t = (xhr.responseText || "").replace(/<[^>]*>/g, "").trim(); if (t && t.length < 300) raw = t; }
    const path = (e.detail.pathInfo && e.detail.pathInfo.requestPath) || "";
    // A session the page asked for that is gone, or not the agent's.
    if (xhr.status === 404 && path.startsWith("/ui/sessions/")) { say(notFoundWords.session, "error"); return; }
    // A request the page makes on its own (a refresh every few seconds, a
    // live update) keeps the news waiting behind an error; the agent's own
    // request supersedes it.
    (byAgent(e) ? say : show)(inWords(xhr.status, code, raw), "error");
  });
  document.addEventListener("htmx:sendError", (e) =>
    (byAgent(e) ? say : show)("The server could not be reached; the page keeps trying.", "error"));
  // The event stream dropped: signed out, or only the network?
  let pingBusy = false;
  document.addEventListener("htmx:sseError", async (e) => {
    if (e.target && e.target.dataset) delete e.target.dataset.connected;
    if (pingBusy) return;
    pingBusy = true;
    try {
      const r = await fetch("/ui/ping", { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (r.status === 401) signInAgain();
    } catch (_) { /* offline: the stream reconnects by itself */ }
    pingBusy = false;
  });
  // Events are not replayed to a new connection: when the stream opens,
  // offers and presence are read again (they may have changed since the page
  // was made); after a drop, everything is.
  let streamOpened = false;
  document.addEventListener("htmx:sseOpen", (e) => {
    const live = e.target;
    if (live && live.dataset) live.dataset.connected = "1";
    loadPresence();
    if (streamOpened) changed();
    else if (window.htmx && $("#offers")) htmx.ajax("GET", "/ui/offers", { target: "#offers", swap: "innerHTML" });
    streamOpened = true;
  });
  // The customer of the open session left: said where the agent looks.
  const seenTaskMessages = new WeakSet();
  document.addEventListener("htmx:sseMessage", (e) => {
    if (!e.detail || e.detail.type !== "task") return;
    if (seenTaskMessages.has(e.detail)) return;
    seenTaskMessages.add(e.detail);
    let d = null;
    try { d = JSON.parse(e.detail.data); } catch (_) { return; }
    // Its offer is no longer waiting for an answer: news of it is stale.
    if (d && d.task_id) forget(d.task_id);
    const open = $("#detail .session-detail");
    if (d && open && d.task_id === open.dataset.task && (d.reason === "customer_left" || d.reason === "chat_ended")) {
      const left = open.dataset.modality === "call" ? "The caller hung up." : "The customer left the chat.";
      announce(d.reason === "chat_ended" ? "The chat has ended." : left + " Wrap up when you are done.", "error");
    } else if (d && open && d.task_id === open.dataset.task && d.reason === "customer_back") {
      announce("The customer is back in the chat.");
    }
  });
  // The stream says the token is gone.
  document.addEventListener("htmx:sseMessage", (e) => { if (e.detail && e.detail.type === "error") signInAgain(); });

  // --- times: local time zone, ticking clocks ---------------------------------------
  function localize(root) {
    $$("time[datetime]", root).forEach((t) => {
      if (t.dataset.local) return;
      const d = new Date(t.getAttribute("datetime"));
      if (isNaN(d)) return;
      const today = new Date().toDateString() === d.toDateString();
      t.textContent = today ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
        : d.toLocaleString([], { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });
      t.title = d.toLocaleString();
      t.dataset.local = "1";
    });
  }
  function duration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const pad = (n) => String(n).padStart(2, "0");
    return (h ? h + ":" + pad(m) : m) + ":" + pad(r);
  }
  function tick() {
    $$("[data-since]").forEach((el) => {
      const since = Date.parse(el.dataset.since);
      const until = el.dataset.until ? Date.parse(el.dataset.until) : Date.now();
      if (!isNaN(since)) el.textContent = duration(until - since);
    });
    // Offers: the time left before the offer goes to the next agent (RONA).
    $$("[data-deadline]").forEach((el) => {
      const left = Date.parse(el.dataset.deadline) - Date.now();
      if (isNaN(left)) return;
      el.textContent = left > 0 ? duration(left) + " left" : "time is up";
      el.classList.toggle("urgent", left < 10000);
    });
  }
  setInterval(tick, 1000);

  // --- selection: the open session ----------------------------------------------------
  function selectedId() { const a = $("#detail .session-detail"); return a ? a.dataset.session : null; }
  function markSelected() {
    const id = selectedId();
    $$("#session-list .row").forEach((r) => {
      const link = $(".row-link", r);
      if (r.dataset.session === id) { r.classList.add("selected"); if (link) link.setAttribute("aria-current", "true"); }
      else { r.classList.remove("selected"); if (link) link.removeAttribute("aria-current"); }
    });
    syncUrl();
  }
  // The address keeps the open session, the search and the filters, so a
  // reload (or the link copied) shows the same. A session that could not be
  // opened leaves it.
  function syncUrl() {
    // Only the workspace keeps its place in the address: another page's
    // (the sign-in's `?next=` and `#token=`, the operators') is its own.
    const form = $("#filters");
    if (!form) return;
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(form)) {
      if (typeof value === "string" && value.trim()) params.set(name, value.trim());
    }
    const id = selectedId();
    if (id) params.set("session", id);
    const search = params.toString();
    const url = location.pathname + (search ? "?" + search : "");
    if (url !== location.pathname + location.search) history.replaceState(null, "", url);
  }
  document.addEventListener("input", (e) => { if (e.target.closest && e.target.closest("#filters")) syncUrl(); });
  document.addEventListener("change", (e) => { if (e.target.closest && e.target.closest("#filters")) syncUrl(); });
  // After an action that moves the work elsewhere (an accepted offer opens
  // its session; a declined one leaves the list), focus follows it, so a
  // keyboard user goes on from there and not from the top of the page.
  let focusAfterSwap = null;
  // The open session's heading: where focus goes when the control that had
  // it is gone and nothing has taken its place (never a form control the
  // agent did not choose).
  function focusHeading() {
    const h = $("#detail h2");
    if (!h) return false;
    h.setAttribute("tabindex", "-1");
    h.focus({ preventScroll: true });
    return true;
  }
  const focusLost = () => !document.activeElement || document.activeElement === document.body;
  function openSession(id, focus) {
    if (focus) focusAfterSwap = "detail";
    if (window.htmx) htmx.ajax("GET", "/ui/sessions/" + encodeURIComponent(id), { target: "#detail", swap: "innerHTML" });
  }
  function editorOpen() { return !!$("#editor-slot .editor"); }
  // The draft being edited shows in the editor only, not also as a card
  // of the thread below it.
  function hideEditedDraft() {
    const editing = editorOpen() && editor ? editor.draft : null;
    $$("#thread .reply[data-draft]").forEach((card) => { card.hidden = card.dataset.draft === editing; });
  }
  function wrapupDirty() { const f = $("#wrapup"); return !!(f && f.dataset.dirty); }
  function chatReplyTyped() { const t = $("#chat-reply textarea"); return !!(t && t.value.trim()); }
  // Something is being typed in the open session: a refresh keeps it.
  function typing() { return editorOpen() || wrapupDirty() || chatReplyTyped(); }
  // Live refresh of the open session: whole when nothing is being typed,
  // else only the thread and the header.
  // Several events often come at once (an action, then its event): one refresh.
  let refreshTimer = null;
  function refreshDetail() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refreshDetailNow, 120);
  }
  function refreshDetailNow() {
    const id = selectedId();
    if (!id || !window.htmx) return;
    const url = "/ui/sessions/" + encodeURIComponent(id);
    if (typing()) {
      // What is being typed stays; what the task's state decides follows it
      // (the actions, the transcript, and the codes when they are not being
      // edited). One request for every part: htmx would keep only the last
      // of several made at once.
      refreshParts(url, id, ["thread", "transcript", "session-head", "task-actions", "details-widget", "wrapup-widget"]);
    } else {
      htmx.ajax("GET", url, { target: "#detail", swap: "innerHTML" });
    }
  }
  // Parts marked with data-version are replaced only when what they show
  // changed (the task's state, the saved codes): a transfer being chosen,
  // a colleague list loaded or the focus in them stays otherwise. An
  // older answer that arrives after a newer one is dropped.
  let partsAsked = 0;
  async function refreshParts(url, session, ids) {
    const asked = ++partsAsked;
    let text;
    try {
      const r = await fetch(url, { credentials: "same-origin", headers: { "HX-Request": "true" } });
      if (!r.ok) return;
      text = await r.text();
    } catch (_) { return; /* the next event refreshes again */ }
    // Another session opened meanwhile, or a newer answer came: not this one.
    if (selectedId() !== session || asked !== partsAsked) return;
    const fresh = new DOMParser().parseFromString(text, "text/html");
    ids.forEach((id) => {
      const old = document.getElementById(id), part = fresh.getElementById(id);
      if (!old || !part) return;
      // The codes and tags being edited stay; whether Save is possible
      // follows the task (it becomes possible once the task is handled).
      if (id === "wrapup-widget" && wrapupDirty()) { followCanSave(old, part); return; }
      if (old.dataset.version !== undefined && old.dataset.version === part.dataset.version) return;
      const a = document.activeElement;
      const key = a && a !== old && old.contains(a) ? focusKey(a) : null;
      old.replaceWith(part);
      if (window.htmx) htmx.process(part);
      localize(part);
      // A keyboard user's focus in the part stays on the same control, else
      // goes to the session's heading.
      if (key !== null && focusLost()) {
        const same = $$(FOCUSABLE, part).find((el) => focusKey(el) === key && !el.disabled);
        if (same) same.focus({ preventScroll: true }); else focusHeading();
      }
    });
    hideEditedDraft();
    tick();
  }
  // The open session's thread (the agent's drafts and replies) as the
  // server has it now, before a choice that depends on it.
  async function refreshThread() {
    const id = selectedId();
    if (!id) return;
    let text;
    try {
      const r = await fetch("/ui/sessions/" + encodeURIComponent(id), { credentials: "same-origin", headers: { "HX-Request": "true" } });
      if (!r.ok) return;
      text = await r.text();
    } catch (_) { return; /* the page's own view serves */ }
    const old = $("#thread"), part = new DOMParser().parseFromString(text, "text/html").getElementById("thread");
    if (!old || !part || selectedId() !== id) return;
    old.replaceWith(part);
    if (window.htmx) htmx.process(part);
    localize(part);
    hideEditedDraft();
  }
  function followCanSave(oldPart, freshPart) {
    const form = $("#wrapup", oldPart), freshForm = $("#wrapup", freshPart);
    if (!form || !freshForm) return;
    const save = $('button[value="save"]', form), freshSave = $('button[value="save"]', freshForm);
    if (!save || !freshSave) return;
    save.disabled = freshSave.disabled;
    const why = $('[id^="save-why-"]', form), freshWhy = $('[id^="save-why-"]', freshForm);
    if (freshWhy) {
      save.setAttribute("aria-describedby", freshWhy.id);
      if (!why) save.after(freshWhy);
    } else {
      save.removeAttribute("aria-describedby");
      if (why) why.remove();
    }
    form.dataset.canSave = freshForm.dataset.canSave;
  }
  document.body && document.body.addEventListener("sb:changed", refreshDetail);
  ["task", "message", "draft", "chat_message", "transcript"].forEach((kind) => document.addEventListener("htmx:sseMessage", (e) => {
    if (e.detail && e.detail.type === kind) refreshDetail();
  }));

  // A refresh that arrives while the agent is typing in this session (codes,
  // tags, a reply) must not wipe it: only the thread and header change then.
  document.addEventListener("htmx:beforeSwap", (e) => {
    if (e.detail.target.id !== "detail" || !typing()) return;
    const id = selectedId();
    const path = (e.detail.pathInfo && e.detail.pathInfo.requestPath) || "";
    if (id && path.split("?")[0] === "/ui/sessions/" + encodeURIComponent(id)) {
      e.detail.shouldSwap = false;
      refreshDetail();
    }
  });

  // Parts made anew while the agent works (waiting work every few
  // seconds, the sessions list at every event, the open session after an
  // action): a keyboard user's focus stays on the same control, or the one
  // now in its place, instead of dropping to the page's top. Only focus
  // the swap itself lost is put back (never taken from elsewhere).
  const FOCUSABLE = "a[href], button, input, select, textarea, [tabindex]";
  const keptFocus = {};
  function focusKey(el) {
    const d = el.dataset || {};
    return [el.tagName, el.id, d.action, d.session, d.task, d.editor, el.getAttribute("name"),
      el.getAttribute("value"), el.getAttribute("href")].map((v) => v || "").join("|");
  }
  document.addEventListener("htmx:beforeSwap", (e) => {
    const t = e.detail.target;
    if (!["offers", "queue", "session-list", "detail"].includes(t.id)) return;
    const a = document.activeElement;
    keptFocus[t.id] = a && a !== t && t.contains(a) && !a.matches("#detail h2")
      ? { key: focusKey(a), index: $$(FOCUSABLE, t).indexOf(a) }
      : null;
  });
  document.addEventListener("htmx:afterSwap", (e) => {
    const t = e.detail.target;
    const k = keptFocus[t.id];
    keptFocus[t.id] = null;
    const a = document.activeElement;
    if (!k || (a && a !== document.body)) return;
    const all = $$(FOCUSABLE, t).filter((el) => !el.disabled && el.getClientRects().length > 0);
    const same = all.find((el) => focusKey(el) === k.key);
    if (same) { same.focus({ preventScroll: true }); return; }
    // In the open session, a control that is gone (Mark as handled, Save,
    // Transfer: the task moved on) leaves the focus on the session's
    // heading; whatever sits at its index now (a code, a tag field) is not
    // what the agent chose.
    if (t.id === "detail") { focusHeading(); return; }
    // In a list, the one now at its place (the next offer's when that
    // offer is gone), else the search when no offer is left.
    const next = all[Math.min(Math.max(k.index, 0), all.length - 1)] || (t.id === "offers" ? $("#q") : null);
    if (next) next.focus({ preventScroll: true });
  });

  // A refresh of the open session keeps the focus on its heading.
  document.addEventListener("htmx:beforeSwap", (e) => {
    const a = document.activeElement;
    if (e.detail.target.id === "detail" && a && a.matches && a.matches("#detail h2")) focusAfterSwap = "detail";
  });
  // Waiting work is made anew every few seconds: where the agent scrolled
  // to in it stays.
  let queueScroll = 0;
  document.addEventListener("htmx:beforeSwap", (e) => {
    if (e.detail.target.id !== "queue") return;
    const list = $("#queue .queue-list");
    queueScroll = list ? list.scrollTop : 0;
  });
  document.addEventListener("htmx:afterSwap", (e) => {
    if (e.detail.target.id === "queue") { const list = $("#queue .queue-list"); if (list) list.scrollTop = queueScroll; }
    if (e.detail.target.id === "detail") hideEditedDraft();
    localize(e.detail.target);
    tick();
    if (e.detail.target.id === "detail" || e.detail.target.id === "session-list") markSelected();
    if (e.detail.target.id === "detail" && ((e.detail.requestConfig && e.detail.requestConfig.triggeringEvent) || focusAfterSwap === "detail")) {
      focusAfterSwap = null;
      const h = $("#detail h2"); if (h) { h.setAttribute("tabindex", "-1"); h.focus({ preventScroll: false }); }
    }
    if (e.detail.target.id === "offers" && focusAfterSwap === "offers") {
      focusAfterSwap = null;
      const next = $("#offers button[data-action=offer-accept]") || $("#q") || $("#session-list a");
      if (next) next.focus({ preventScroll: false });
    }
  });
  document.addEventListener("htmx:load", (e) => localize(e.detail.elt));

  // --- wrap-up: codes and tags, save once ------------------------------------------------
  document.addEventListener("input", (e) => { const f = e.target.closest && e.target.closest("#wrapup"); if (f) f.dataset.dirty = "1"; });
  document.addEventListener("change", (e) => { const f = e.target.closest && e.target.closest("#wrapup"); if (f) f.dataset.dirty = "1"; });
  // Tags separated by commas; a tag in double quotes may hold commas (and
  // its quotes doubled), as the server writes such a tag into the field.
  function splitTags(text) {
    const tags = [];
    let cur = "", quoted = false, i = 0;
    while (i < text.length) {
      const c = text[i];
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') { cur += '"'; i += 2; continue; }
        if (c === '"') { quoted = false; i += 1; continue; }
        cur += c;
      } else if (c === '"' && cur.trim() === "") {
        quoted = true; cur = "";
      } else if (c === ",") {
        tags.push(cur.trim()); cur = "";
      } else {
        cur += c;
      }
      i += 1;
    }
    tags.push(cur.trim());
    return tags.filter(Boolean);
  }

  async function submitWrapup(form, intent) {
    const session = form.dataset.session;
    const picked = (name) => $$('input[name="' + name + '"]:checked', form).map((i) => i.value);
    const tags = splitTags($('input[name="tags"]', form).value || "");
    const body = { codes: { primary: picked("primary"), secondary: picked("secondary") }, tags };
    try {
      const r = await api("PUT", "/api/v1/sessions/" + encodeURIComponent(session) + "/wrapup", body, { headers: { "If-Match": '"' + (form.dataset.etag || "*") + '"' } });
      if (r.etag) form.dataset.etag = r.etag.replace(/^W\//, "").replace(/"/g, "");
    } catch (err) {
      if (err.status === 412) {
        // Kept meanwhile elsewhere: show what is kept now.
        delete form.dataset.dirty;
        changed();
      }
      throw err;
    }
    delete form.dataset.dirty;
    leaveWrapup = false;
    if (intent === "save") {
      await api("POST", "/api/v1/sessions/" + encodeURIComponent(session) + "/save");
      say("Saved. This session is now a final record.");
    } else {
      say("Codes and tags kept. Save when you are done.");
    }
    changed();
  }

  // --- the reply editor ---------------------------------------------------------------------
  const AUTOSAVE_MS = 800;
  let editor = null; // { form, draft, version, timer, saving, pending, conflict }

  // A name holding a comma or a semicolon is written in double quotes
  // ("Mueller, Hans" <h@x>); the list is split outside quotes.
  function addressesText(list) {
    return (list || []).map((a) => {
      if (!a.name) return a.email;
      const name = a.name.replace(/[<>"]/g, "");
      return (/[,;]/.test(name) ? '"' + name + '"' : name) + " <" + a.email + ">";
    }).join(", ");
  }
  function parseAddresses(text) {
    const parts = [];
    let cur = "", quoted = false;
    for (const c of text || "") {
      if (c === '"') quoted = !quoted;
      if (!quoted && (c === "," || c === ";")) { parts.push(cur); cur = ""; } else cur += c;
    }
    parts.push(cur);
    return parts.map((s) => s.trim()).filter(Boolean).map((s) => {
      const m = s.match(/^(.*)<([^>]+)>$/);
      if (m) { const name = m[1].trim().replace(/^"|"$/g, ""); return name ? { name, email: m[2].trim() } : { email: m[2].trim() }; }
      return { email: s };
    });
  }
  function escapeHtml(s) { return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }
  // The HTML part follows the text the agent wrote: paragraphs, and "> " lines as a quote.
  function textToHtml(text) {
    const out = [];
    let quote = [];
    const flush = () => { if (quote.length) { out.push("<blockquote>" + quote.map(escapeHtml).join("<br>") + "</blockquote>"); quote = []; } };
    for (const line of text.split("\n")) {
      if (/^>\s?/.test(line)) { quote.push(line.replace(/^>\s?/, "")); continue; }
      flush();
      out.push(line.trim() === "" ? "<br>" : escapeHtml(line) + "<br>");
    }
    flush();
    return "<div>" + out.join("") + "</div>";
  }
  function editorBody() {
    const f = editor.form;
    const text = $('[name="body"]', f).value;
    return {
      to: parseAddresses($('[name="to"]', f).value),
      cc: parseAddresses($('[name="cc"]', f).value),
      bcc: parseAddresses($('[name="bcc"]', f).value),
      subject: $('[name="subject"]', f).value,
      body_text: text,
      body_html: textToHtml(text),
    };
  }
  function saveState(text, kind) {
    if (!editor) return;
    const s = $(".save-state", editor.form);
    s.textContent = text;
    s.className = "save-state " + (kind || "muted");
  }
  function fillEditor(d) {
    const f = editor.form;
    $('[name="to"]', f).value = addressesText(d.to);
    $('[name="cc"]', f).value = addressesText(d.cc);
    $('[name="bcc"]', f).value = addressesText(d.bcc);
    $('[name="subject"]', f).value = d.subject || "";
    $('[name="body"]', f).value = d.body_text || "";
    const kinds = { reply: "Reply", reply_all: "Reply all", forward: "Forward", new: "New message" };
    $(".editor-title", f).textContent = (kinds[d.kind] || "Reply") + (d.state === "failed" ? " (failed: edit and send again)" : "");
    renderAttachments(d);
    editor.version = d.version;
    editor.draft = d.id;
    editor.kind = d.kind;
    editor.form.dataset.draft = d.id;
    hideEditedDraft();
    saveState("Saved (version " + d.version + ")");
  }
  // Sizes as people say them: bytes below a kilobyte, KB, then MB.
  function sizeText(bytes) {
    const n = Number(bytes) || 0;
    if (n < 1024) return n + (n === 1 ? " byte" : " bytes");
    if (n < 1024 * 1024) return Math.round(n / 1024) + " KB";
    return (n / (1024 * 1024)).toFixed(1).replace(/\.0$/, "") + " MB";
  }
  function renderAttachments(d) {
    const ul = $(".attachment-list", editor.form);
    ul.replaceChildren();
    for (const a of d.attachments || []) {
      const li = document.createElement("li");
      li.textContent = a.filename + " (" + sizeText(a.size) + ") ";
      const b = document.createElement("button");
      b.type = "button"; b.textContent = "Remove"; b.dataset.editor = "remove-attachment"; b.dataset.attachment = a.id;
      b.setAttribute("aria-label", "Remove " + a.filename);
      li.append(b);
      ul.append(li);
    }
  }
  function showConflict() {
    editor.conflict = true;
    const box = $(".conflict", editor.form);
    $(".conflict-text", box).textContent = "This draft was changed in another tab or window, so your last changes here were not saved. Load the saved version, or keep yours to replace it.";
    box.hidden = false;
    saveState("Not saved: changed elsewhere", "error");
  }
  function hideConflict() { editor.conflict = false; $(".conflict", editor.form).hidden = true; }
  // The draft went out from another tab or window: nothing here can change
  // it any more; what was typed here stays on screen to be copied.
  function showSentElsewhere() {
    editor.conflict = true;
    editor.sentElsewhere = true;
    const box = $(".conflict", editor.form);
    $(".conflict-text", box).textContent = "This reply was already sent from another tab or window; what you typed here since was not sent. Copy it if you need it, then close the editor.";
    $$("button", box).forEach((b) => { b.hidden = true; });
    box.hidden = false;
    saveState("Already sent elsewhere", "error");
  }

  async function autosave(force) {
    if (!editor) return true;
    // Changed or sent elsewhere: nothing here is saved until the agent chooses.
    if (editor.conflict && !force) return false;
    clearTimeout(editor.timer);
    if (editor.saving) { editor.pending = true; return editor.saving; }
    const run = (async () => {
      saveState("Saving…");
      const saving = editor;
      try {
        const r = await api("PUT", "/api/v1/drafts/" + encodeURIComponent(editor.draft), editorBody(), { headers: { "If-Match": '"' + editor.version + '"' } });
        editor.version = r.data.version;
        editor.unsaved = false;
        hideConflict();
        saveState("Saved (version " + r.data.version + ")");
        return true;
      } catch (err) {
        if (err.status === 409 && /is (queued|sending|sent)\b/.test(err.raw)) {
          showSentElsewhere();
          return false;
        }
        if (err.status === 409) { showConflict(); return false; }
        // The server away or failing: the text stays here and is saved again
        // shortly (and at once when the live connection comes back).
        if (err.status === 0 || err.status >= 500) {
          saveState("Not saved yet (the server could not be reached): your text is kept here and saved again shortly.", "error");
          clearTimeout(saving.retry);
          saving.retry = setTimeout(() => { if (editor === saving && editor.unsaved) autosave(); }, 3000);
          return false;
        }
        saveState("Not saved: " + err.message + " (your text is kept here until you fix it)", "error");
        return false;
      }
    })();
    editor.saving = run;
    const ok = await run;
    editor.saving = null;
    if (editor && editor.pending) { editor.pending = false; return autosave(); }
    return ok;
  }
  function scheduleAutosave() {
    if (!editor) return;
    editor.unsaved = true;
    clearTimeout(editor.timer);
    saveState("Editing…");
    editor.timer = setTimeout(() => autosave(), AUTOSAVE_MS);
  }

  function openEditor(d) {
    const slot = $("#editor-slot");
    if (!slot) return;
    const tpl = $("#editor-template");
    slot.replaceChildren(tpl.content.cloneNode(true));
    editor = { form: $(".editor", slot), draft: d.id, version: d.version, timer: null, saving: null, pending: false, conflict: false };
    fillEditor(d);
    editor.form.addEventListener("input", (e) => { if (e.target.name !== "files") scheduleAutosave(); });
    $('[name="to"]', editor.form).focus();
  }
  // The editor closed with its text saved (or nothing left to save there);
  // false, and the editor left open with the reason, when it could not be.
  async function closeEditorSaved() {
    if (!editorOpen() || !editor) return true;
    if (editor.sentElsewhere || (await autosave())) { closeEditor(); return true; }
    say("Your reply could not be saved, so nothing else was done: " + ($(".save-state", editor.form).textContent || "") + ".", "error");
    return false;
  }
  function closeEditor() {
    const kind = editor ? editor.kind : null;
    if (editor) { clearTimeout(editor.timer); clearTimeout(editor.retry); }
    editor = null;
    const slot = $("#editor-slot");
    const hadFocus = !!(slot && slot.contains(document.activeElement));
    if (slot) slot.replaceChildren();
    hideEditedDraft();
    // Closed from inside (Close, Send, Discard): the focus goes to the
    // button of its kind (Reply, Forward…), where the agent would open it again.
    if (hadFocus && focusLost()) {
      const b = $$("#detail button[data-action=draft]").find((x) => x.dataset.kind === kind) || $("#detail button[data-action=draft]");
      if (b) b.focus({ preventScroll: true }); else focusHeading();
    }
    changed();
  }

  async function uploadFiles(files) {
    for (const file of files) {
      if (!(await autosave())) return;
      saveState("Uploading " + file.name + "…");
      try {
        const path = "/api/v1/drafts/" + encodeURIComponent(editor.draft) + "/attachments?filename=" + encodeURIComponent(file.name);
        const r = await api("POST", path, file, { headers: { "If-Match": '"' + editor.version + '"', "Content-Type": file.type || "application/octet-stream" } });
        editor.version = r.data.version;
        renderAttachments(r.data);
        saveState("Attached " + file.name + " (version " + r.data.version + ")");
      } catch (err) {
        if (err.status === 409) showConflict();
        else if (err.status === 413 || err.code === "too_large") saveState("Not attached: " + inWords(err.status, err.code, err.raw, "“" + file.name + "”"), "error");
        else saveState("Not attached: " + err.message, "error");
        return;
      }
    }
  }

  async function editorAction(name, btn) {
    if (!editor) return;
    const path = "/api/v1/drafts/" + encodeURIComponent(editor.draft);
    if (name === "close") {
      if (editor.sentElsewhere || (await autosave())) { closeEditor(); return; }
      say("The draft could not be saved, so the editor stays open: " + ($(".save-state", editor.form).textContent || ""), "error");
      return;
    }
    if (name === "discard") {
      // Deleting what was written is for good: a second click does it.
      if (btn.dataset.confirmed !== "1") {
        btn.dataset.confirmed = "1";
        setTimeout(() => { if (btn.isConnected) delete btn.dataset.confirmed; }, 15000);
        say("Click Discard again to delete this draft for good.", "error");
        return;
      }
      await api("DELETE", path);
      say("Draft discarded.");
      closeEditor();
      return;
    }
    if (name === "reload") {
      const r = await api("GET", path);
      hideConflict();
      fillEditor(r.data);
      return;
    }
    if (name === "overwrite") {
      const r = await api("GET", path);
      editor.version = r.data.version;
      hideConflict();
      await autosave(true);
      return;
    }
    if (name === "remove-attachment") {
      if (!(await autosave())) return;
      const r = await api("DELETE", path + "/attachments/" + encodeURIComponent(btn.dataset.attachment), undefined, { headers: { "If-Match": '"' + editor.version + '"' } });
      editor.version = r.data.version;
      renderAttachments(r.data);
      saveState("Removed (version " + r.data.version + ")");
      return;
    }
    if (name === "send") {
      if (!(await autosave())) { say("The draft could not be saved, so it was not sent.", "error"); return; }
      let r;
      // A refusal (no recipients, no text) is said beside Send too, where
      // the agent looks, not only in the status line at the top.
      try { r = await api("POST", path + "/send"); } catch (err) { saveState("Not sent: " + err.message, "error"); throw err; }
      say(r.data.state === "sent" ? "Sent." : "Queued for sending. Its state shows on the thread.");
      closeEditor();
    }
  }

  // A reply written but not sent is easy to forget at Mark as handled or
  // Save: the first click says so, a second one goes on.
  // Only while the agent answers the task: once transferred on, their
  // drafts can no longer be sent, so Save is not held up by them.
  function unsentReplies() {
    const open = $("#detail .session-detail");
    if (open && open.dataset.holds !== "1") return 0;
    return $$("#thread .reply.reply-draft, #thread .reply.reply-failed").length + (editorOpen() ? 1 : 0);
  }
  function confirmUnsent(btn, what) {
    if (!unsentReplies() || btn.dataset.confirmed === "1") { delete btn.dataset.confirmed; return true; }
    btn.dataset.confirmed = "1";
    setTimeout(() => { if (btn.isConnected) delete btn.dataset.confirmed; }, 15000);
    say("You have a reply that is not sent. It will not be sent by " + what + ": send it first, or click " + what + " again to go on without sending it.", "error");
    return false;
  }

  // --- clicks and submits ---------------------------------------------------------------------
  async function act(btn) {
    const a = btn.dataset.action;
    if (a === "pickup") {
      const r = await api("POST", "/api/v1/tasks/" + encodeURIComponent(btn.dataset.task) + "/pickup");
      say("Picked up. It is yours now.");
      changed();
      // As after Accept: the focus goes to the session, where the work is now.
      if (r.data && r.data.id) openSession(r.data.id, true);
    } else if (a === "offer-accept") {
      const id = btn.dataset.session;
      try { await api("POST", "/api/v1/offers/" + encodeURIComponent(id) + "/accept"); }
      catch (err) { changed(); throw err; }
      say("Accepted. It is yours now.");
      changed();
      openSession(id, true);
    } else if (a === "offer-decline") {
      try { await api("POST", "/api/v1/offers/" + encodeURIComponent(btn.dataset.session) + "/decline"); }
      catch (err) { changed(); throw err; }
      say("Declined. It goes to the next agent.");
      focusAfterSwap = "offers";
      changed();
    } else if (a === "open-chat") {
      // The tab opens now, while the click still counts (no pop-up blocker),
      // and follows the handle once it is here.
      const tab = window.open("", "_blank");
      let r;
      try { r = await api("GET", "/api/v1/tasks/" + encodeURIComponent(btn.dataset.task) + "/chat-handle"); }
      catch (err) { if (tab) tab.close(); throw err; }
      const url = new URL(r.data.url, location.href).href;
      if (!tab) { say("The browser blocked the new tab: allow pop-ups for Switchboard, then click Open chat again.", "error"); return; }
      tab.opener = null;
      tab.location.replace(url);
      say("The chat opens in a new tab.");
    } else if (a === "context-open-all") {
      // Browsers let a click open one tab; the rest need pop-ups allowed.
      const links = $$("#context-links a[data-context-link]");
      let blocked = 0;
      for (const link of links) {
        const tab = window.open("", "_blank");
        if (!tab) { blocked++; continue; }
        tab.opener = null;
        tab.location.replace(link.href);
      }
      if (blocked) say("The browser blocked " + blocked + " of " + links.length + " tabs: allow pop-ups for Switchboard to open them all at once.", "error");
      else say("Opened " + links.length + " context tabs.");
    } else if (a === "handled") {
      if (!confirmUnsent(btn, "Mark as handled")) return;
      // The reply editor is for a task being worked: keep its draft, close it.
      if (!(await closeEditorSaved())) return;
      await api("POST", "/api/v1/tasks/" + encodeURIComponent(btn.dataset.task) + "/handled");
      say("Marked as handled. Add codes and tags, then Save.");
      changed();
    } else if (a === "draft") {
      // The same kind already open in the editor: go on there.
      if (editorOpen() && editor && editor.kind === btn.dataset.kind) {
        const body = $('[name="body"]', editor.form);
        if (body) body.focus();
        return;
      }
      if (editorOpen() && !(await autosave())) return;
      // An unsent draft of the same kind is opened again, not doubled by
      // an empty one beside it. The server is asked: another tab or window
      // of the agent's may have made one this page has not shown yet.
      await refreshThread();
      const unsent = $$("#thread .reply.reply-draft[data-draft]").find((c) => c.dataset.kind === btn.dataset.kind && !(editor && editor.draft === c.dataset.draft));
      if (unsent) {
        const r = await api("GET", "/api/v1/drafts/" + encodeURIComponent(unsent.dataset.draft));
        openEditor(r.data);
        say("Your unsent " + (btn.dataset.kind === "forward" ? "forward" : "reply") + " is open again.");
        return;
      }
      const r = await api("POST", "/api/v1/tasks/" + encodeURIComponent(btn.dataset.task) + "/drafts", { kind: btn.dataset.kind });
      openEditor(r.data);
    } else if (a === "edit-draft") {
      if (editorOpen() && !(await autosave())) return;
      const r = await api("GET", "/api/v1/drafts/" + encodeURIComponent(btn.dataset.draft));
      openEditor(r.data);
    } else if (a === "unsend-draft") {
      if (editorOpen() && !(await autosave())) return;
      const r = await api("POST", "/api/v1/drafts/" + encodeURIComponent(btn.dataset.draft) + "/unsend");
      say("Taken back before it was sent: change it, send it again or discard it.");
      openEditor(r.data);
      changed();
    } else if (a === "queue-more") {
      const limit = $("#queue-limit");
      if (limit) limit.value = btn.dataset.limit;
      if (window.htmx) htmx.trigger("#queue", "sb:queue-more");
    } else if (a === "webhook-redeliver") {
      await api("POST", "/api/v1/admin/webhooks/deliveries/" + encodeURIComponent(btn.dataset.id) + "/redeliver");
      say("Delivery " + btn.dataset.id + " sent again; it shows here again if it fails.");
      changed();
    } else if (a === "recorded-task") {
      const r = await api("POST", "/api/v1/ops/recorded/" + encodeURIComponent(btn.dataset.id) + "/task");
      say("Made a task: " + (r.data && r.data.task ? r.data.task : "") + ", queued in its service.");
      changed();
    } else if (a === "q-retry" || a === "q-release" || a === "q-dismiss") {
      const verb = a.slice(2);
      const r = await api("POST", "/api/v1/ops/quarantine/" + encodeURIComponent(btn.dataset.id) + "/" + verb);
      const tasks = r.data && r.data.tasks ? r.data.tasks.length : 0;
      say(verb === "dismiss" ? "Dismissed: kept on record, not taken in." :
        (r.data && r.data.duplicate ? "Taken in: it was already there (a duplicate)." : "Taken in" + (tasks ? ": " + tasks + " new task" + (tasks === 1 ? "" : "s") : "") + "."));
      changed();
    }
  }

  document.addEventListener("click", async (e) => {
    const btn = e.target.closest && e.target.closest("button");
    if (!btn || btn.disabled) return;
    try {
      if (btn.dataset.editor && btn.dataset.editor !== "send") { e.preventDefault(); await editorAction(btn.dataset.editor, btn); }
      else if (btn.dataset.action) {
        e.preventDefault();
        // One action at a time per button. Marked busy, not disabled: a
        // disabled button would drop the keyboard focus that pressed it.
        if (btn.dataset.busy) return;
        btn.dataset.busy = "1";
        btn.setAttribute("aria-disabled", "true");
        try { await act(btn); } finally { delete btn.dataset.busy; btn.removeAttribute("aria-disabled"); }
      }
    } catch (err) { say(err.message, "error"); }
  });

  document.addEventListener("submit", async (e) => {
    const form = e.target;
    try {
      if (form.id === "wrapup") {
        e.preventDefault();
        // One submission at a time: a double click on Save is one save.
        if (form.dataset.busy) return;
        const intent = e.submitter && e.submitter.value === "save" ? "save" : "keep";
        if (intent === "save" && !confirmUnsent(e.submitter, "Save")) return;
        // Marked busy, not disabled: a disabled button would drop the
        // keyboard focus that pressed it.
        const buttons = $$("button[type=submit]", form).filter((b) => !b.disabled);
        form.dataset.busy = "1";
        buttons.forEach((b) => b.setAttribute("aria-disabled", "true"));
        try { await submitWrapup(form, intent); } finally {
          delete form.dataset.busy;
          buttons.forEach((b) => b.removeAttribute("aria-disabled"));
        }
      } else if (form.dataset.action === "transfer") {
        e.preventDefault();
        const sel = $("select", form);
        if (!sel.value) { say("Choose where to transfer it first.", "error"); return; }
        const to = sel.options[sel.selectedIndex].dataset.name || sel.value;
        if (!(await closeEditorSaved())) return;
        await api("POST", "/api/v1/tasks/" + encodeURIComponent(form.dataset.task) + "/transfer", { [sel.name]: sel.value });
        say("Transferred to " + to + ". Wrap up your part and Save.");
        changed();
      } else if (form.classList.contains("editor")) {
        e.preventDefault();
        await editorAction("send");
      } else if (form.dataset.action === "chat-reply") {
        e.preventDefault();
        const box = $("textarea", form);
        if (!box.value.trim()) { say("Write something first.", "error"); return; }
        const button = $("button[type=submit]", form);
        button.disabled = true;
        try {
          await api("POST", "/api/v1/tasks/" + encodeURIComponent(form.dataset.task) + "/chat-messages", { text: box.value });
        } finally { button.disabled = false; }
        box.value = "";
        say("Sent to the chat. Its delivery shows beside it.");
        refreshDetail();
      }
    } catch (err) { say(err.message, "error"); }
  });

  // --- presence: always in the header; set here, or in another tab ----------------------------
  const presenceWords = { available: "Available: offers come to you.", busy: "Busy: no offers.", away: "Away: no offers.", offline: "Offline: no offers." };
  function showPresence(p) {
    const sel = $("#presence");
    if (!sel || !p) return;
    sel.value = p.status;
    sel.dataset.current = p.status;
    const dot = $(".presence .dot");
    if (dot) dot.className = "dot p-" + p.status;
    const note = $("#presence-note");
    if (note) {
      // A keyboard user on Resume offers now keeps a place: the new
      // button, else the selector.
      const hadFocus = note.contains(document.activeElement);
      const paused = p.status === "available" && p.paused_until && Date.parse(p.paused_until) > Date.now();
      note.textContent = "";
      if (paused) {
        // Choosing Available again in the selector would not fire a change
        // when it already shows Available: a button says it instead.
        note.append("Paused after a missed offer until " + new Date(p.paused_until).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) + ". ");
        const resume = document.createElement("button");
        resume.type = "button";
        resume.id = "resume-offers";
        resume.className = "small";
        resume.textContent = "Resume offers now";
        note.append(resume);
        // The note goes when the pause ends, without waiting for a reload.
        clearTimeout(pauseTimer);
        pauseTimer = setTimeout(loadPresence, Math.min(Date.parse(p.paused_until) - Date.now() + 500, 2147483647));
      }
      if (hadFocus && focusLost()) ($("#resume-offers", note) || sel).focus({ preventScroll: true });
    }
  }
  let pauseTimer = null;
  let presenceTurn = Promise.resolve(), presencePending = 0;
  document.addEventListener("click", async (e) => {
    const btn = e.target;
    if (!(btn instanceof Element) || btn.id !== "resume-offers" || btn.dataset.busy) return;
    // Busy, not disabled: a disabled button would drop the keyboard focus.
    btn.dataset.busy = "1";
    btn.setAttribute("aria-disabled", "true");
    try {
      const r = await api("PUT", "/api/v1/me/presence", { status: "available" });
      showPresence(r.data);
      say(presenceWords.available);
      changed();
    } catch (err) { say(err.message, "error"); }
    delete btn.dataset.busy;
    btn.removeAttribute("aria-disabled");
  });
  async function loadPresence() {
    if (!$("#presence")) return;
    try { showPresence((await api("GET", "/api/v1/me/presence")).data); } catch (_) { /* said by the next action */ }
  }
  // A new offer is said in the status line (read out by screen readers; the
  // ticking card is not). A missed offer (RONA) pauses the agent: the header
  // says until when.
  document.addEventListener("htmx:sseMessage", (e) => {
    if (!e.detail || !firstTime(e)) return;
    let data = {};
    try { data = JSON.parse(e.detail.data || "{}") || {}; } catch (_) { /* the fragments show it */ }
    if (e.detail.type === "presence") loadPresence();
    else if (e.detail.type === "offer") {
      announce("Incoming offer" + (data.subject ? ": " + data.subject : "") + ". Accept or Decline it under Incoming offers.", undefined, data.task_id);
    } else if (e.detail.type === "offer_withdrawn") {
      forget(data.task_id);
      if (data.result === "rona") {
        loadPresence();
        announce("An offer went to the next agent: it was not answered in time.");
      }
    }
  });

  document.addEventListener("change", async (e) => {
    if (e.target.id === "presence") {
      const sel = e.target, status = sel.value;
      // Marked busy, not disabled: a disabled selector would drop the
      // keyboard focus that changed it. Choices made meanwhile are sent in
      // turn, the last one last.
      sel.dataset.busy = "1";
      sel.setAttribute("aria-busy", "true");
      presencePending++;
      const turn = presenceTurn.then(async () => {
        try {
          const r = await api("PUT", "/api/v1/me/presence", { status });
          showPresence(r.data);
          say(presenceWords[status] || "Presence set.");
          changed();
        } catch (err) { sel.value = sel.dataset.current || ""; say(err.message, "error"); }
      });
      presenceTurn = turn;
      await turn;
      if (--presencePending === 0) { delete sel.dataset.busy; sel.removeAttribute("aria-busy"); }
      return;
    }
    if (e.target.name === "files" && editor && e.target.files && e.target.files.length) {
      const files = Array.from(e.target.files);
      e.target.value = "";
      try { await uploadFiles(files); } catch (err) { say(err.message, "error"); }
    }
  });

  // Mail previews load when opened.
  document.addEventListener("toggle", (e) => {
    const d = e.target;
    if (d.tagName !== "DETAILS" || !d.open) return;
    const f = $("iframe.preview", d);
    if (f && !f.getAttribute("src") && f.dataset.src) f.src = f.dataset.src;
  }, true);

  // Leaving the page with a reply or codes not yet saved: the browser asks.
  window.addEventListener("beforeunload", (e) => {
    if ((editor && editor.unsaved) || wrapupDirty()) { e.preventDefault(); e.returnValue = ""; }
  });
  // Another session chosen while codes and tags here are not kept: the first
  // choice says so, choosing again leaves them.
  let leaveWrapup = false;
  document.addEventListener("htmx:beforeRequest", (e) => {
    const target = e.detail.target;
    if (!target || target.id !== "detail" || !wrapupDirty()) return;
    const path = (e.detail.requestConfig && e.detail.requestConfig.path) || "";
    if (path.split("?")[0] === "/ui/sessions/" + encodeURIComponent(selectedId() || "")) return;
    if (leaveWrapup) { leaveWrapup = false; return; }
    e.preventDefault();
    focusAfterSwap = null;
    leaveWrapup = true;
    setTimeout(() => { leaveWrapup = false; }, 10000);
    say("Your codes and tags here are not kept yet: click Keep codes and tags, or choose the other session again to leave them.", "error");
  });
  // The live connection is back: a reply that could not be saved is saved now.
  // The outage notice goes with the outage.
  document.addEventListener("htmx:sseOpen", () => {
    const st = $("#status");
    if (st && /could not be reached/.test(st.textContent)) { st.textContent = ""; st.className = "status"; }
    if (editor && editor.unsaved && !editor.conflict) autosave();
  });

  // Ctrl+Enter (⌘+Enter) in the chat box sends it.
  document.addEventListener("keydown", (e) => {
    const form = e.target && e.target.closest && e.target.closest("#chat-reply");
    if (form && e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
  });
  // "/" jumps to the search.
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && !e.ctrlKey && !e.metaKey && !/^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName)) {
      const q = $("#q");
      if (q) { e.preventDefault(); q.focus(); }
    }
  });

  // --- sign-in: a link "…/sign-in#token=…" fills the form and sends it ----------------------
  function signInFromLink() {
    const form = $("#sign-in");
    if (!form || !location.hash.startsWith("#token=")) return;
    const token = decodeURIComponent(location.hash.slice(7));
    history.replaceState(null, "", location.pathname + location.search);
    if (!token || $("#sign-in-error")) return;
    $("#token", form).value = token;
    form.submit();
  }

  // A sign-in link opened while signed in (the server sent the page on):
  // the token leaves the address bar at once, and the agent chooses.
  function linkWhileSignedIn() {
    if ($("#sign-in") || !location.hash.startsWith("#token=")) return;
    const token = decodeURIComponent(location.hash.slice(7));
    history.replaceState(null, "", location.pathname + location.search);
    const el = $("#status");
    if (!token || !el) return;
    const who = ($(".who") || {}).textContent || "";
    el.textContent = "";
    el.className = "status status-info";
    el.setAttribute("role", "status");
    el.append(`This page was opened with a sign-in link, but you are already signed in${who ? " as " + who.trim() : ""}. `);
    const form = document.createElement("form");
    form.method = "post";
    form.action = "/sign-in";
    form.className = "inline";
    for (const [name, value] of [["method", "token"], ["token", token], ["next", location.pathname + location.search]]) {
      const input = document.createElement("input");
      input.type = "hidden"; input.name = name; input.value = value;
      form.append(input);
    }
    const use = document.createElement("button");
    use.type = "submit"; use.textContent = "Sign in with the link";
    const keep = document.createElement("button");
    keep.type = "button"; keep.textContent = "Stay signed in";
    keep.addEventListener("click", () => clearStatus(document.querySelector("main")));
    form.append(use, " ", keep);
    el.append(form);
  }

  function start() {
    localize(document);
    tick();
    markSelected();
    loadPresence();
    signInFromLink();
    linkWhileSignedIn();
  }
  // A link opened in a tab already showing Switchboard changes only the
  // fragment: no new page, so look again.
  window.addEventListener("hashchange", () => { signInFromLink(); linkWhileSignedIn(); });
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

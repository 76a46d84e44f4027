// flowlog web console: a small vanilla JS app over the server's JSON/HTTP API (Connect protocol).
// Every view's state lives in the URL hash (#/page?key=value...), so a view can be shared or reloaded.
// The API is the gRPC API itself (POST /flowlog.v1.<Service>/<Method>): no rule is implemented here.
"use strict";

// ---------------------------------------------------------------------------------------------
// API client
// ---------------------------------------------------------------------------------------------
const KEY_STORE = "flowlog.apiKey";
const PROTOCOLS = { 1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6" };
const RESOURCE_TYPES = ["RESOURCE_TYPE_EIP", "RESOURCE_TYPE_NAT_GATEWAY", "RESOURCE_TYPE_IPV6_GATEWAY",
  "RESOURCE_TYPE_PEERING_CONNECTION", "RESOURCE_TYPE_DEDICATED_GATEWAY", "RESOURCE_TYPE_SSL_VPN_GATEWAY",
  "RESOURCE_TYPE_CSN"];
const TRAFFIC_TYPES = [["TRAFFIC_TYPE_ALL", "All traffic"], ["TRAFFIC_TYPE_ALLOW", "Allow (accepted by security groups / ACLs)"],
  ["TRAFFIC_TYPE_DENY", "Deny (rejected by security groups / ACLs)"]];

class RpcError extends Error {
  constructor(err, httpStatus) {
    super(err.message || err.code || "request failed");
    this.code = err.code || "unknown";
    this.httpStatus = httpStatus || 0;
    this.details = err.details || [];
    this.violations = [];
    this.quota = [];
    for (const d of this.details) {
      if (d.type === "google.rpc.BadRequest" && d.debug) this.violations.push(...(d.debug.fieldViolations || []));
      if (d.type === "google.rpc.QuotaFailure" && d.debug) this.quota.push(...(d.debug.violations || []));
    }
  }
}

function apiKey() { return sessionStorage.getItem(KEY_STORE) || localStorage.getItem(KEY_STORE) || ""; }

function headers(contentType) {
  const h = { "Content-Type": contentType, "Connect-Protocol-Version": "1" };
  const key = apiKey();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function httpError(res) {
  let body = {};
  try { body = await res.json(); } catch (e) { body = { code: "unknown", message: `HTTP ${res.status}` }; }
  return new RpcError(body, res.status);
}

// One unary call; on UNAUTHENTICATED asks for a key and retries.
async function rpc(method, body) {
  for (let attempt = 0; ; attempt++) {
    let res;
    try {
      res = await fetch("/flowlog.v1." + method, { method: "POST", headers: headers("application/json"),
        body: JSON.stringify(body || {}) });
    } catch (e) {
      throw new RpcError({ code: "unavailable", message: "cannot reach the server: " + e.message });
    }
    if (res.ok) return await res.json();
    const err = await httpError(res);
    if (err.code === "unauthenticated" && attempt < 3) { await askKey(err.message); continue; }
    throw err;
  }
}

function envelope(obj) {
  const payload = new TextEncoder().encode(JSON.stringify(obj));
  const out = new Uint8Array(5 + payload.length);
  new DataView(out.buffer).setUint32(1, payload.length);
  out.set(payload, 5);
  return out;
}

// A server-streaming call: yields each message; throws RpcError from the end-of-stream message.
async function* stream(method, body, signal) {
  let res;
  try {
    res = await fetch("/flowlog.v1." + method, { method: "POST", headers: headers("application/connect+json"),
      body: envelope(body), signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new RpcError({ code: "unavailable", message: "cannot reach the server: " + e.message });
  }
  if (!res.ok) throw await httpError(res);
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = new Uint8Array(0);
  for (;;) {
    let chunk;
    try { chunk = await reader.read(); } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new RpcError({ code: "unavailable", message: "connection lost: " + e.message });
    }
    if (chunk.done) break;
    const joined = new Uint8Array(buf.length + chunk.value.length);
    joined.set(buf); joined.set(chunk.value, buf.length); buf = joined;
    while (buf.length >= 5) {
      const flags = buf[0];
      const n = new DataView(buf.buffer, buf.byteOffset, buf.length).getUint32(1);
      if (buf.length < 5 + n) break;
      const msg = JSON.parse(dec.decode(buf.subarray(5, 5 + n)));
      buf = buf.slice(5 + n);
      if (flags & 2) { if (msg.error) throw new RpcError(msg.error, 200); return; }
      yield msg;
    }
  }
  throw new RpcError({ code: "unavailable", message: "connection lost before the end of the stream" });
}

// Collects every page of a list RPC (page_size 1000, the API's maximum).
async function listAll(method, body, field) {
  const out = [];
  let token = "";
  do {
    const r = await rpc(method, { ...body, pageSize: 1000, pageToken: token });
    out.push(...(r[field] || []));
    token = r.nextPageToken || "";
  } while (token);
  return out;
}

// ---------------------------------------------------------------------------------------------
// API key dialog
// ---------------------------------------------------------------------------------------------
let keyWaiters = [];
function askKey(reason) {
  const dlg = document.getElementById("key-dialog");
  document.getElementById("key-reason").textContent = reason || "Enter the API key of your account.";
  document.getElementById("key-input").value = "";
  if (!dlg.open) dlg.showModal();
  document.getElementById("key-input").focus();
  return new Promise((resolve) => keyWaiters.push(resolve));
}

function setupKeyDialog() {
  const dlg = document.getElementById("key-dialog");
  document.getElementById("key-form").addEventListener("submit", () => {
    const key = document.getElementById("key-input").value.trim();
    sessionStorage.removeItem(KEY_STORE); localStorage.removeItem(KEY_STORE);
    (document.getElementById("key-remember").checked ? localStorage : sessionStorage).setItem(KEY_STORE, key);
    const waiters = keyWaiters; keyWaiters = [];
    waiters.forEach((w) => w());
    if (!waiters.length) render();
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE); localStorage.removeItem(KEY_STORE);
    document.getElementById("key-input").value = "";
  });
  document.getElementById("key-button").addEventListener("click", () => askKey("Enter the API key of your account."));
  dlg.addEventListener("cancel", () => { /* keep waiting callers pending until a key is given */ });
}

// ---------------------------------------------------------------------------------------------
// DOM helpers
// ---------------------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else if (k === "value") el.value = v;
    else if (k === "checked" || k === "selected" || k === "disabled") el[k] = !!v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

let idSeq = 0;
function uid(prefix) { return `${prefix}-${++idSeq}`; }

// A labelled control; `field` names the API field(s) whose violations are shown under it.
function field(labelText, control, opts = {}) {
  if (!control.id) control.id = uid("f");
  const wrap = h("div", { class: "control", "data-field": opts.field || control.name || "" }, control);
  if (opts.hint) {
    const hint = h("span", { class: "hint", id: control.id + "-hint" }, opts.hint);
    control.setAttribute("aria-describedby", hint.id);
    wrap.append(hint);
  }
  return [h("label", { for: control.id }, labelText), wrap];
}

function banner(kind, ...content) { return h("div", { class: "banner " + kind, role: kind === "error" ? "alert" : "status" }, ...content); }

function errorBanner(err) {
  const parts = [h("span", { class: "code" }, (err.code || "error").toUpperCase()), err.message];
  for (const q of err.quota || []) parts.push(h("div", {}, `Quota ${q.subject}: ${q.description}`));
  return banner("error", ...parts);
}

function clearErrors(root) {
  root.querySelectorAll(".field-error, .caret").forEach((e) => e.remove());
  root.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
  root.querySelectorAll(".form-error").forEach((e) => e.replaceChildren());
}

// Shows each field violation next to the control that names its field (exact name, or the last
// part of a dotted path such as new_log_store.name); the rest in the form's banner.
function showErrors(root, err) {
  clearErrors(root);
  const unplaced = [];
  let first = null;
  for (const v of err.violations) {
    const f = v.field || "";
    const wraps = [...root.querySelectorAll("[data-field]")];
    const wrap = wraps.find((w) => w.dataset.field.split(" ").includes(f)) ||
      wraps.find((w) => w.dataset.field.split(" ").includes(f.split(".").pop()));
    if (!wrap) { unplaced.push(v); continue; }
    const control = wrap.querySelector("input, select, textarea");
    const msg = h("p", { class: "field-error", id: uid("err"), role: "alert" }, `${v.description}`);
    wrap.append(msg);
    if (control) {
      control.setAttribute("aria-invalid", "true");
      control.setAttribute("aria-describedby", ((control.getAttribute("aria-describedby") || "") + " " + msg.id).trim());
      const m = /^at position (\d+)/.exec(v.description);
      if (m && control.tagName === "INPUT") {
        const pos = Math.max(0, Number(m[1]) - 1);
        wrap.insertBefore(h("div", { class: "caret", "aria-hidden": "true" }, control.value + "\n" + " ".repeat(pos) + "^"), msg);
        first = first || (() => { control.focus(); control.setSelectionRange(pos, Math.min(pos + 1, control.value.length)); });
      }
      first = first || (() => control.focus());
    }
  }
  const box = root.querySelector(".form-error");
  if (box && (unplaced.length || !err.violations.length)) {
    const b = errorBanner(err);
    for (const v of unplaced) b.append(h("div", {}, `${v.field}: ${v.description}`));
    box.append(b);
  }
  if (first) first();
}

function fmtTime(ts) {
  if (!ts) return "";
  return ts.replace("T", " ").replace(/(\.\d+)?Z$/, "");
}
function fmtNum(v) { return Number(v || 0).toLocaleString("en-US"); }
function enumShort(v, prefix) { return (v || "").replace(prefix, ""); }
function proto(n) { return PROTOCOLS[n] || String(n || 0); }

// ---------------------------------------------------------------------------------------------
// Routing: #/page?params
// ---------------------------------------------------------------------------------------------
function route() {
  const hash = location.hash.replace(/^#/, "") || "/flowlogs";
  const [path, query] = hash.split("?");
  return { page: path.replace(/^\//, "") || "flowlogs", params: new URLSearchParams(query || "") };
}

function href(page, params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== "") p.set(k, v);
  const q = p.toString();
  return "#/" + page + (q ? "?" + q : "");
}

function go(page, params) { location.hash = href(page, params); }
// Records the view's state in the URL without re-rendering (live updates such as a tail cursor).
function setUrl(page, params) { history.replaceState(null, "", href(page, params)); }

let regions = [];
let currentRegion = "";
let cleanup = null;

function region(params) { return params.get("region") || currentRegion || regions[0] || ""; }

async function loadRegions() {
  const seen = new Set();
  try {
    const resources = await listAll("ResourceService/ListResources", {}, "resources");
    resources.forEach((r) => seen.add(r.region));
  } catch (e) { if (!(e instanceof RpcError)) throw e; }
  regions = [...seen].sort();
}

function renderRegionSelect(active) {
  const sel = document.getElementById("region-select");
  const list = regions.includes(active) || !active ? regions : [...regions, active];
  sel.replaceChildren(...list.map((r) => h("option", { value: r, selected: r === active }, r)));
}

const PAGES = {};

async function render() {
  if (cleanup) { try { cleanup(); } catch (e) { /* ignore */ } cleanup = null; }
  const { page, params } = route();
  const main = document.getElementById("main");
  delete main.dataset.ready;
  delete main.dataset.renderMs;
  document.querySelectorAll("header nav a").forEach((a) => {
    if (a.dataset.page === page.split("/")[0]) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  });
  if (!regions.length) await loadRegions();
  currentRegion = region(params);
  renderRegionSelect(currentRegion);
  const fn = PAGES[page] || PAGES.flowlogs;
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    await fn(main, params);
  } catch (err) {
    if (!(err instanceof RpcError)) throw err;
    main.replaceChildren(h("h1", {}, "Error"), errorBanner(err));
  }
}

// ---------------------------------------------------------------------------------------------
// Flow logs
// ---------------------------------------------------------------------------------------------
PAGES.flowlogs = async (main, params) => {
  const reg = region(params);
  const logs = (await listAll("FlowLogService/ListFlowLogs", { region: reg }, "flowLogs"))
    .sort((a, b) => a.name.localeCompare(b.name));
  const msg = params.get("msg");
  const rows = logs.map((fl) => flowLogRow(fl, reg));
  main.replaceChildren(
    h("h1", {}, `Flow logs in ${reg}`),
    msg ? banner("ok", msg) : null,
    h("div", { class: "actions" }, h("a", { class: "button", href: href("flowlogs/new", { region: reg }) }, "Create flow log")),
    h("p", { class: "muted" }, `${logs.length} flow log${logs.length === 1 ? "" : "s"}.`),
    h("table", { "aria-label": "Flow logs" },
      h("thead", {}, h("tr", {}, ["Name", "ID", "Resource", "Network", "Traffic", "Destination", "State", "Description", "Actions"]
        .map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
};

function flowLogRow(fl, reg) {
  const dest = fl.destination || {};
  const state = enumShort(fl.state, "FLOW_LOG_STATE_");
  const tr = h("tr", { "data-id": fl.id });
  const actions = h("div", { class: "row-actions" });
  const errBox = h("div", { class: "form-error" });
  const toggle = async () => {
    const next = state === "PAUSED" ? "FLOW_LOG_STATE_ACTIVE" : "FLOW_LOG_STATE_PAUSED";
    try {
      await rpc("FlowLogService/UpdateFlowLog", { flowLog: { id: fl.id, state: next }, updateMask: "state" });
      render();
    } catch (err) { errBox.replaceChildren(errorBanner(err)); }
  };
  const confirmDelete = () => {
    actions.replaceChildren(
      h("span", {}, `Delete ${fl.name}? LogStore ${dest.project}/${dest.logStore} and its records are kept.`),
      h("button", { type: "button", class: "danger", onclick: async () => {
        try {
          await rpc("FlowLogService/DeleteFlowLog", { id: fl.id });
          go("flowlogs", { region: reg, msg: `Deleted flow log ${fl.name}; LogStore ${dest.project}/${dest.logStore} kept.` });
        } catch (err) { errBox.replaceChildren(errorBanner(err)); }
      } }, "Confirm delete"),
      h("button", { type: "button", class: "secondary", onclick: () => render() }, "Cancel"));
    tr.classList.add("confirm");
    actions.querySelector("button").focus();
  };
  actions.append(
    h("a", { class: "button secondary", href: href("flowlogs/edit", { region: reg, id: fl.id }) }, "Edit"),
    h("button", { type: "button", class: "secondary", onclick: toggle }, state === "PAUSED" ? "Resume" : "Pause"),
    h("button", { type: "button", class: "secondary", onclick: confirmDelete }, "Delete"),
    h("a", { class: "button secondary", href: href("search", { region: reg, project: dest.project, stores: dest.logStore,
      filter: `flow_log_id = ${fl.id}` }) }, "Records"));
  tr.append(
    h("td", {}, fl.name), h("td", { class: "mono" }, fl.id),
    h("td", {}, enumShort(fl.resourceType, "RESOURCE_TYPE_"), h("br"), h("span", { class: "mono" }, fl.resourceId)),
    h("td", { class: "mono" }, fl.networkId), h("td", {}, enumShort(fl.trafficType, "TRAFFIC_TYPE_")),
    h("td", {}, h("a", { href: href("search", { region: reg, project: dest.project, stores: dest.logStore }) },
      `${dest.project}/${dest.logStore}`)),
    h("td", { class: "state-" + state }, state), h("td", {}, fl.description || ""), h("td", {}, actions, errBox));
  return tr;
}

PAGES["flowlogs/new"] = async (main, params) => {
  const reg = region(params);
  const [resources, stores] = await Promise.all([
    listAll("ResourceService/ListResources", { region: reg }, "resources"),
    listAll("LogStoreService/ListLogStores", { region: reg }, "logStores")]);
  const form = h("form", { class: "form", novalidate: true, "aria-labelledby": "create-title" });
  const name = h("input", { name: "name", required: true, maxlength: 65, autocomplete: "off" });
  const rtype = h("select", { name: "resource_type" },
    RESOURCE_TYPES.map((t) => h("option", { value: t }, enumShort(t, "RESOURCE_TYPE_").replaceAll("_", " "))));
  const resource = h("select", { name: "resource_id" });
  const network = h("select", { name: "network_id" });
  const traffic = h("select", { name: "traffic_type" }, h("option", { value: "" }, "Choose…"),
    TRAFFIC_TYPES.map(([v, t]) => h("option", { value: v }, t)));
  const destExisting = h("input", { type: "radio", name: "dest", value: "existing", checked: stores.length > 0 });
  const destNew = h("input", { type: "radio", name: "dest", value: "new", checked: stores.length === 0 });
  const existing = h("select", { name: "existing_log_store" },
    stores.map((s) => h("option", { value: `${s.project}/${s.name}` }, `${s.project} / ${s.name}`)));
  const newProject = h("input", { name: "new_project", autocomplete: "off" });
  const newName = h("input", { name: "new_name", autocomplete: "off" });
  const newRetention = h("input", { name: "retention_days", type: "number", min: 1, max: 3650, value: 7 });
  const desc = h("textarea", { name: "description", rows: 3 });
  const counter = h("span", { class: "hint", "aria-live": "polite" }, "0 / 200 characters");
  desc.addEventListener("input", () => { counter.textContent = `${[...desc.value].length} / 200 characters`; });

  const fillResources = () => {
    const list = resources.filter((r) => r.type === rtype.value);
    resource.replaceChildren(...(list.length ? list.map((r) => h("option", { value: r.id }, `${r.id} — ${r.name}`))
      : [h("option", { value: "" }, "no resource of this type in " + reg)]));
    fillNetworks();
  };
  const fillNetworks = () => {
    const r = resources.find((x) => x.id === resource.value);
    const nets = [...new Set(resources.map((x) => x.networkId))];
    network.replaceChildren(...nets.map((n) => h("option", { value: n, selected: r && r.networkId === n }, n)));
  };
  rtype.addEventListener("change", fillResources);
  resource.addEventListener("change", fillNetworks);
  fillResources();

  const existingBox = h("div", { class: "control", "data-field": "existing_log_store existing_log_store.name existing_log_store.project" },
    h("label", { for: (existing.id = uid("f")) }, "Existing LogStore"), existing);
  const newBox = h("div", { class: "control" },
    ...field("Project", newProject, { field: "new_log_store.project project" }),
    ...field("LogStore name", newName, { field: "new_log_store.name log_store" }),
    ...field("Retention (days)", newRetention, { field: "new_log_store.retention_days retention_days" }));
  const syncDest = () => { existingBox.hidden = !destExisting.checked; newBox.hidden = !destNew.checked; };
  destExisting.addEventListener("change", syncDest); destNew.addEventListener("change", syncDest);
  syncDest();
  const submit = h("button", { type: "submit" }, "Create");
  form.append(
    h("div", { class: "form-error", style: "grid-column: 1 / -1" }),
    h("label", {}, "Region"), h("div", { class: "control" }, h("span", { class: "mono" }, reg),
      h("span", { class: "hint" }, "Switch with the region selector at the top; a flow log delivers to a LogStore of its region.")),
    ...field("Name", name, { field: "name", hint: "1–65 characters, starts with a letter; letters, digits, Chinese characters and -_/." }),
    ...field("Resource type", rtype, { field: "resource_type" }),
    ...field("Resource", resource, { field: "resource_id" }),
    ...field("Network", network, { field: "network_id", hint: "The VPC (or CSN instance) where the resource is." }),
    ...field("Traffic type", traffic, { field: "traffic_type" }),
    h("span", { class: "label" }, h("b", {}, "Destination")),
    h("fieldset", { "data-field": "destination_choice destination" }, h("legend", {}, "Destination LogStore"),
      h("label", { class: "inline" }, destExisting, "Select existing LogStore"), " ",
      h("label", { class: "inline" }, destNew, "Create new LogStore"), existingBox, newBox),
    ...field("Description", desc, { field: "description" }), h("span"), counter,
    h("span"), h("div", { class: "actions" }, submit, h("a", { class: "button secondary", href: href("flowlogs", { region: reg }) }, "Cancel")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { region: reg, name: name.value, resourceType: rtype.value, resourceId: resource.value,
      networkId: network.value, description: desc.value, clientToken: form.dataset.token || "" };
    if (traffic.value) body.trafficType = traffic.value;
    if (destNew.checked) {
      body.newLogStore = { project: newProject.value, name: newName.value, retentionDays: Number(newRetention.value || 0) };
    } else {
      const [project, ...rest] = existing.value.split("/");
      body.existingLogStore = { project: project || "", name: rest.join("/") };
    }
    submit.disabled = true;
    try {
      const fl = await rpc("FlowLogService/CreateFlowLog", body);
      go("flowlogs", { region: reg, msg: `Created flow log ${fl.name} (${fl.id}).` });
    } catch (err) {
      if (!(err instanceof RpcError)) throw err;
      showErrors(form, err);
    } finally { submit.disabled = false; }
  });
  main.replaceChildren(h("h1", { id: "create-title" }, "Create flow log"), form);
  name.focus();
};

PAGES["flowlogs/edit"] = async (main, params) => {
  const reg = region(params);
  const fl = await rpc("FlowLogService/GetFlowLog", { id: params.get("id") || "" });
  const form = h("form", { class: "form", novalidate: true, "aria-labelledby": "edit-title" });
  const name = h("input", { name: "name", value: fl.name, required: true });
  const traffic = h("select", { name: "traffic_type" },
    TRAFFIC_TYPES.map(([v, t]) => h("option", { value: v, selected: fl.trafficType === v }, t)));
  const state = h("select", { name: "state" }, ["FLOW_LOG_STATE_ACTIVE", "FLOW_LOG_STATE_PAUSED"].map((s) =>
    h("option", { value: s, selected: (fl.state || "") === s }, enumShort(s, "FLOW_LOG_STATE_"))));
  const desc = h("textarea", { name: "description", rows: 3 }, fl.description || "");
  const dest = fl.destination || {};
  form.append(h("div", { class: "form-error", style: "grid-column: 1 / -1" }),
    h("span", {}, h("b", {}, "Fixed at creation")), h("div", { class: "mono" },
      `${fl.id} · ${enumShort(fl.resourceType, "RESOURCE_TYPE_")} ${fl.resourceId} · ${fl.networkId} · → ${dest.project}/${dest.logStore}`),
    ...field("Name", name, { field: "name flow_log.name" }),
    ...field("Traffic type", traffic, { field: "traffic_type flow_log.traffic_type" }),
    ...field("State", state, { field: "state flow_log.state" }),
    ...field("Description", desc, { field: "description flow_log.description" }),
    h("span"), h("div", { class: "actions" }, h("button", { type: "submit" }, "Save"),
      h("a", { class: "button secondary", href: href("flowlogs", { region: reg }) }, "Cancel")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await rpc("FlowLogService/UpdateFlowLog", { flowLog: { id: fl.id, name: name.value, trafficType: traffic.value,
        state: state.value, description: desc.value }, updateMask: "name,trafficType,state,description" });
      go("flowlogs", { region: reg, msg: `Saved flow log ${name.value}.` });
    } catch (err) { if (!(err instanceof RpcError)) throw err; showErrors(form, err); }
  });
  main.replaceChildren(h("h1", { id: "edit-title" }, `Edit flow log ${fl.name}`), form);
  name.focus();
};

// ---------------------------------------------------------------------------------------------
// LogStores and resources
// ---------------------------------------------------------------------------------------------
PAGES.logstores = async (main, params) => {
  const reg = region(params);
  const project = params.get("project") || "";
  const stores = await listAll("LogStoreService/ListLogStores", { region: reg, project }, "logStores");
  const projects = [...new Set(stores.map((s) => s.project))].sort();
  const filter = h("select", { onchange: (e) => go("logstores", { region: reg, project: e.target.value }) },
    h("option", { value: "" }, "All projects"), projects.concat(project && !projects.includes(project) ? [project] : [])
      .map((p) => h("option", { value: p, selected: p === project }, p)));
  const form = h("form", { class: "form", novalidate: true, "aria-label": "Create LogStore" });
  const fProject = h("input", { name: "project", value: project }), fName = h("input", { name: "name" });
  const fRet = h("input", { name: "retention_days", type: "number", min: 1, max: 3650, value: 7 });
  const fDesc = h("input", { name: "description" });
  form.append(h("div", { class: "form-error", style: "grid-column: 1 / -1" }),
    ...field("Project", fProject, { field: "project log_store.project" }), ...field("Name", fName, { field: "name log_store.name" }),
    ...field("Retention (days)", fRet, { field: "retention_days log_store.retention_days" }),
    ...field("Description", fDesc, { field: "description log_store.description" }),
    h("span"), h("div", {}, h("button", { type: "submit" }, "Create LogStore")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await rpc("LogStoreService/CreateLogStore", { logStore: { region: reg, project: fProject.value, name: fName.value,
        retentionDays: Number(fRet.value || 0), description: fDesc.value } });
      render();
    } catch (err) { if (!(err instanceof RpcError)) throw err; showErrors(form, err); }
  });
  const byProject = {};
  stores.forEach((s) => (byProject[s.project] = byProject[s.project] || []).push(s));
  const errBox = h("div", { class: "form-error" });
  const storeRow = (p, s) => h("tr", {},
    h("td", {}, s.name), h("td", { class: "num" }, s.retentionDays), h("td", {}, s.description || ""),
    h("td", {}, fmtTime(s.createTime)),
    h("td", {}, h("div", { class: "row-actions" },
      h("a", { class: "button secondary", href: href("search", { region: reg, project: p, stores: s.name }) }, "Search"),
      h("a", { class: "button secondary", href: href("analysis", { region: reg, project: p, stores: s.name }) }, "Analyse"),
      h("button", { type: "button", class: "secondary", onclick: async (ev) => {
        if (ev.target.dataset.armed !== "1") {
          ev.target.dataset.armed = "1"; ev.target.textContent = "Confirm delete (records too)"; return;
        }
        try { await rpc("LogStoreService/DeleteLogStore", { region: reg, project: p, name: s.name }); render(); }
        catch (err) { errBox.replaceChildren(errorBanner(err)); }
      } }, "Delete"))));
  const sections = Object.keys(byProject).sort().map((p) => h("section", {}, h("h2", {}, `Project ${p}`),
    h("table", { "aria-label": `LogStores of project ${p}` },
      h("thead", {}, h("tr", {}, ["Name", "Retention (days)", "Description", "Created", "Actions"]
        .map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, byProject[p].map((s) => storeRow(p, s)))), h("p")));
  main.replaceChildren(h("h1", {}, `LogStores in ${reg}`), errBox,
    h("div", { class: "toolbar" }, h("div", { class: "group" }, ...field("Project", filter))),
    ...sections,
    stores.length ? null : h("p", { class: "muted" }, "No LogStore yet."),
    h("h2", {}, "Create LogStore"), form);
};

PAGES.resources = async (main, params) => {
  const reg = region(params);
  const type = params.get("type") || "";
  const list = await listAll("ResourceService/ListResources", { region: reg, type: type || undefined }, "resources");
  const sel = h("select", { onchange: (e) => go("resources", { region: reg, type: e.target.value }) },
    h("option", { value: "" }, "All types"), RESOURCE_TYPES.map((t) => h("option", { value: t, selected: t === type }, enumShort(t, "RESOURCE_TYPE_"))));
  main.replaceChildren(h("h1", {}, `Resources in ${reg}`),
    h("div", { class: "toolbar" }, h("div", { class: "group" }, ...field("Resource type", sel))),
    h("table", { "aria-label": "Resources" },
      h("thead", {}, h("tr", {}, ["ID", "Type", "Name", "Network", "Addresses", "Rules"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, list.map((r) => h("tr", {}, h("td", { class: "mono" }, r.id), h("td", {}, enumShort(r.type, "RESOURCE_TYPE_")),
        h("td", {}, r.name), h("td", { class: "mono" }, r.networkId), h("td", { class: "mono" }, (r.addresses || []).join(", ")),
        h("td", { class: "num" }, (r.rules || []).length))))));
};

// ---------------------------------------------------------------------------------------------
// Scope (project, LogStores, time range, filter) shared by search, tail and analysis
// ---------------------------------------------------------------------------------------------
function isoInput(date) { return date.toISOString().slice(0, 19); }
function parseInput(v) { return v ? new Date(v.endsWith("Z") ? v : v + "Z") : null; }

async function scopeForm(params, opts) {
  const reg = region(params);
  const stores = await listAll("LogStoreService/ListLogStores", { region: reg }, "logStores");
  const projects = [...new Set(stores.map((s) => s.project))].sort();
  let project = params.get("project") || projects[0] || "";
  const chosen = new Set((params.get("stores") || "").split(",").filter(Boolean));
  const projectSel = h("select", { name: "project" }, projects.map((p) => h("option", { value: p, selected: p === project }, p)));
  const storeBox = h("div", { class: "stores", role: "group", "aria-label": "LogStores" });
  const fillStores = () => {
    project = projectSel.value;
    const mine = stores.filter((s) => s.project === project);
    const any = mine.some((s) => chosen.has(s.name));
    storeBox.replaceChildren(...mine.map((s) => h("label", { class: "inline" },
      h("input", { type: "checkbox", name: "log_stores", value: s.name, checked: any ? chosen.has(s.name) : true }), s.name)));
  };
  projectSel.addEventListener("change", () => { chosen.clear(); fillStores(); });
  fillStores();
  const now = new Date();
  const to = params.get("to") ? new Date(params.get("to")) : now;
  const from = params.get("from") ? new Date(params.get("from")) : new Date(to.getTime() - 3600e3);
  const fromIn = h("input", { type: "datetime-local", step: 1, name: "start_time", value: isoInput(from) });
  const toIn = h("input", { type: "datetime-local", step: 1, name: "end_time", value: isoInput(to) });
  const quick = h("select", { "aria-label": "Quick time range", onchange: (e) => {
    if (!e.target.value) return;
    const end = new Date(); toIn.value = isoInput(end); fromIn.value = isoInput(new Date(end.getTime() - Number(e.target.value) * 1000));
  } }, h("option", { value: "" }, "Set range…"), [["Last 15 minutes", 900], ["Last hour", 3600], ["Last 6 hours", 21600],
    ["Last 24 hours", 86400], ["Last 7 days", 604800]].map(([t, s]) => h("option", { value: s }, t)));
  const filterIn = h("input", { name: "filter", value: params.get("filter") || "", size: 60, autocomplete: "off", spellcheck: "false",
    placeholder: "e.g. action = REJECT AND dst_port IN (22, 3389)" });
  const groups = [
    h("div", { class: "group" }, ...field("Project", projectSel, { field: "project" })),
    h("div", { class: "group", "data-field": "log_stores" }, h("span", {}, h("b", {}, "LogStores")), storeBox),
  ];
  if (!opts.noTime) {
    groups.push(h("div", { class: "group" }, ...field("From (UTC)", fromIn, { field: "start_time" })),
      h("div", { class: "group" }, ...field("To (UTC)", toIn, { field: "end_time" })),
      h("div", { class: "group" }, h("label", { for: (quick.id = uid("f")) }, "Range"), quick));
  }
  groups.push(h("div", { class: "group grow" }, ...field("Filter", filterIn, { field: "filter",
    hint: "fields: addr, src_addr, dst_addr (IP or CIDR), port, src_port, dst_port, protocol, action, direction, flow_log_id…" })));
  const value = () => ({
    region: reg, project: projectSel.value,
    stores: [...storeBox.querySelectorAll("input:checked")].map((i) => i.value),
    from: parseInput(fromIn.value), to: parseInput(toIn.value), filter: filterIn.value.trim(),
  });
  return { groups, value, filterIn, reg, projects };
}

function scopeRequest(v) {
  const r = { region: v.region, project: v.project, logStores: v.stores, filter: v.filter };
  if (v.from) r.startTime = v.from.toISOString();
  if (v.to) r.endTime = v.to.toISOString();
  return r;
}
function scopeParams(v) {
  return { region: v.region, project: v.project, stores: v.stores.join(","), from: v.from && v.from.toISOString(),
    to: v.to && v.to.toISOString(), filter: v.filter };
}

function recordTable(records, label, onCell) {
  const cols = [["Start (UTC)", (r) => fmtTime(r.startTime)], ["Source", (r) => r.srcAddr, "src_addr"],
    ["Src port", (r) => r.srcPort || 0, "src_port"], ["Destination", (r) => r.dstAddr, "dst_addr"],
    ["Dst port", (r) => r.dstPort || 0, "dst_port"], ["Protocol", (r) => proto(r.protocol), "protocol"],
    ["Action", (r) => enumShort(r.action, "ACTION_"), "action"], ["Packets", (r) => fmtNum(r.packets)],
    ["Bytes", (r) => fmtNum(r.bytes)], ["Direction", (r) => enumShort(r.direction, "DIRECTION_"), "direction"],
    ["Rule", (r) => r.ruleId || "", "rule_id"], ["Flow log", (r) => r.flowLogId, "flow_log_id"], ["LogStore", (r) => r.logStore]];
  return h("table", { "aria-label": label },
    h("thead", {}, h("tr", {}, cols.map(([t]) => h("th", { scope: "col", class: ["Packets", "Bytes"].includes(t) ? "num" : "" }, t)))),
    h("tbody", {}, records.map((r) => h("tr", { "data-record-id": r.recordId }, cols.map(([t, f, filterField]) => {
      const v = f(r);
      const cls = [["Packets", "Bytes"].includes(t) ? "num" : "", t === "Action" ? "action-" + v : "", "mono"].join(" ");
      if (onCell && filterField && v !== "") {
        return h("td", { class: cls + " click", tabindex: 0, title: `narrow the filter to ${filterField} = ${v}`,
          onclick: () => onCell(filterField, v), onkeydown: (e) => { if (e.key === "Enter") onCell(filterField, v); } }, v);
      }
      return h("td", { class: cls }, v);
    })))));
}

function narrow(filter, clause) { return filter ? `(${filter}) AND ${clause}` : clause; }
function literal(field, v) {
  if (field === "action") return `action = ${String(v).replace("ACTION_", "")}`;
  if (field === "rule_kind") return `rule_kind = ${String(v).replace("RULE_KIND_", "")}`;
  if (field === "direction") return `direction = ${String(v).replace("DIRECTION_", "")}`;
  return `${field} = ${v}`;
}

// ---------------------------------------------------------------------------------------------
// Search
// ---------------------------------------------------------------------------------------------
PAGES.search = async (main, params) => {
  const scope = await scopeForm(params, {});
  const limit = h("select", { name: "limit" }, [10, 20, 50, 100, 500, 1000].map((n) =>
    h("option", { value: n, selected: String(n) === (params.get("limit") || "100") }, n)));
  const order = h("select", { name: "order" }, [["ORDER_NEWEST_FIRST", "Newest first"], ["ORDER_OLDEST_FIRST", "Oldest first"]]
    .map(([v, t]) => h("option", { value: v, selected: v === (params.get("order") || "ORDER_NEWEST_FIRST") }, t)));
  const form = h("form", { class: "toolbar", novalidate: true, "aria-label": "Search" }, ...scope.groups,
    h("div", { class: "group" }, ...field("Page size", limit, { field: "limit" })),
    h("div", { class: "group" }, ...field("Order", order, { field: "order" })),
    h("div", { class: "group" }, h("button", { type: "submit" }, "Search")),
    h("div", { class: "form-error", style: "flex-basis: 100%" }));
  const results = h("section", { "aria-live": "polite" });
  main.replaceChildren(h("h1", {}, "Search records"), form, results);
  const pages = (params.get("pages") || "").split(",").filter(Boolean); // tokens of the pages before this one
  const page = params.get("page") || "";
  const state = () => ({ ...scopeParams(scope.value()), limit: limit.value, order: order.value });
  form.addEventListener("submit", (ev) => { ev.preventDefault(); go("search", state()); });
  if (!params.get("project") || !scope.projects.length) {
    results.append(h("p", { class: "muted" }, scope.projects.length ? "Choose LogStores and a time range, then Search." :
      "No LogStore in this region yet: create a flow log first."));
    return;
  }
  const v = scope.value();
  const req = { ...scopeRequest(v), limit: Number(limit.value), order: order.value, pageToken: page };
  const records = [];
  let summary = null;
  try {
    for await (const msg of stream("QueryService/Query", req)) {
      if (msg.batch) records.push(...(msg.batch.records || []));
      if (msg.summary) summary = msg.summary;
    }
  } catch (err) {
    if (!(err instanceof RpcError)) throw err;
    if (err.code === "unauthenticated") { await askKey(err.message); return render(); }
    showErrors(form, err);
    return;
  }
  const base = state();
  const download = h("button", { type: "button", class: "secondary", onclick: () => {
    const blob = new Blob([JSON.stringify({ query: req, summary, records }, null, 2)], { type: "application/json" });
    const a = h("a", { href: URL.createObjectURL(blob), download: `flowlog-${v.project}-${Date.now()}.json` });
    document.body.append(a); a.click(); a.remove();
  } }, "Download JSON");
  const prev = pages.length ? h("a", { class: "button secondary", href: href("search", { ...base, page: pages[pages.length - 1],
    pages: pages.slice(0, -1).join(",") }) }, "Previous page") : null;
  const next = summary && summary.more ? h("a", { class: "button secondary", href: href("search", { ...base,
    page: summary.nextPageToken, pages: [...pages, page || "-"].join(",").replace(/^-$/, "-") }) }, "Next page") : null;
  if (prev && pages[pages.length - 1] === "-") prev.setAttribute("href", href("search", { ...base, pages: pages.slice(0, -1).join(",") }));
  results.append(
    h("div", { class: "pager" }, h("span", { id: "search-summary" },
      `${fmtNum(summary ? summary.returned : records.length)} shown of ${fmtNum(summary ? summary.matched : records.length)} matching`),
    prev, next, download),
    recordTable(records, "Search results", (f, val) => go("search", { ...base, filter: narrow(v.filter, literal(f, val)) })));
};

// ---------------------------------------------------------------------------------------------
// Live tail
// ---------------------------------------------------------------------------------------------
PAGES.tail = async (main, params) => {
  const scope = await scopeForm(params, { noTime: true });
  const status = h("span", { class: "status", id: "tail-status", role: "status" }, "stopped");
  const count = h("span", { id: "tail-count" }, "0 records");
  const toggle = h("button", { type: "submit", id: "tail-toggle" }, "Start");
  const form = h("form", { class: "toolbar", novalidate: true, "aria-label": "Live tail" }, ...scope.groups,
    h("div", { class: "group" }, toggle), h("div", { class: "form-error", style: "flex-basis: 100%" }));
  const tbody = h("div");
  main.replaceChildren(h("h1", {}, "Live tail"), form, h("div", { class: "pager" }, status, count), tbody);
  let cursor = params.get("cursor") || "";
  let controller = null;
  let running = false;
  let received = 0;
  let retry = 0;
  const rows = [];
  const seen = new Set();
  const MAX_ROWS = 300;
  const setStatus = (s, text) => { status.className = "status " + s; status.textContent = text || s; status.dataset.state = s; };
  const redraw = () => {
    tbody.replaceChildren(recordTable(rows, "Live records"));
    count.textContent = `${fmtNum(received)} records`;
  };
  const remember = () => setUrl("tail", { ...scopeParams(scope.value()), from: null, to: null, cursor,
    state: running ? "live" : "paused" });
  const run = async () => {
    const v = scope.value();
    controller = new AbortController();
    const req = { region: v.region, project: v.project, logStores: v.stores, filter: v.filter };
    if (cursor) req.resumeCursor = cursor;
    setStatus(cursor ? "resuming" : "connecting");
    try {
      for await (const msg of stream("QueryService/Tail", req, controller.signal)) {
        if (retry) retry = 0;
        setStatus("live");
        if (msg.batch) {
          for (const r of msg.batch.records || []) {
            received++;
            if (seen.has(r.recordId)) continue;
            seen.add(r.recordId); rows.unshift(r);
          }
          rows.splice(MAX_ROWS);
          redraw();
        }
        if (msg.cursor) cursor = msg.cursor;
      }
      throw new RpcError({ code: "unavailable", message: "the server ended the stream" });
    } catch (err) {
      if (err.name === "AbortError" || !running) return;
      if (!(err instanceof RpcError)) throw err;
      if (err.code === "unauthenticated") { await askKey(err.message); if (running) run(); return; }
      if (["invalid_argument", "not_found", "failed_precondition", "permission_denied"].includes(err.code)) {
        running = false; toggle.textContent = "Start"; setStatus("error", "stopped: " + err.code);
        showErrors(form, err); return;
      }
      // A lost connection (or a server restart): reconnect from the cursor, backing off.
      retry = Math.min(retry + 1, 6);
      setStatus("reconnecting", `reconnecting (${err.message})`);
      remember();
      setTimeout(() => { if (running) run(); }, 250 * 2 ** (retry - 1));
    }
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearErrors(form);
    if (running) {
      running = false; toggle.textContent = "Resume"; if (controller) controller.abort();
      setStatus("paused", "paused"); remember();
    } else {
      running = true; toggle.textContent = "Pause"; remember(); run();
    }
  });
  cleanup = () => { running = false; if (controller) controller.abort(); };
  redraw();
  if (params.get("state") === "live" && params.get("project")) { running = true; toggle.textContent = "Pause"; run(); }
  else if (cursor) { toggle.textContent = "Resume"; setStatus("paused", "paused"); }
};

// ---------------------------------------------------------------------------------------------
// Analysis (QueryService.Aggregate)
// ---------------------------------------------------------------------------------------------
const COLORS = { ACTION_ACCEPT: "#2e8b57", ACTION_REJECT: "#c0392b", ACTION_UNSPECIFIED: "#999" };
const PALETTE = ["#1f5fbf", "#e67e22", "#8e44ad", "#16a085", "#c0392b", "#7f8c8d", "#2c3e50", "#d35400", "#27ae60", "#f1c40f"];
const METRICS = { bytes: "sum(bytes)", packets: "sum(packets)", flows: "count" };

function pickInterval(seconds) {
  const steps = [10, 30, 60, 300, 600, 1800, 3600, 10800, 21600, 43200, 86400];
  return steps.find((s) => seconds / s <= 90) || 86400;
}

async function aggregate(base, extra) {
  return rpc("QueryService/Aggregate", { ...base, ...extra });
}

function chartOf(canvas, config) {
  if (!window.Chart) { canvas.replaceWith(h("p", { class: "muted" }, "The charting library is not built (run `make web`).")); return null; }
  return new window.Chart(canvas, config);
}

PAGES.analysis = async (main, params) => {
  const t0 = performance.now();
  const scope = await scopeForm(params, {});
  const metric = params.get("metric") || "bytes";
  const prefix = params.get("prefix") || "";
  const metricSel = h("select", { name: "metric" }, [["bytes", "Bytes"], ["packets", "Packets"], ["flows", "Flows"]]
    .map(([v, t]) => h("option", { value: v, selected: v === metric }, t)));
  const prefixSel = h("select", { name: "prefix" }, [["", "per address"], ["24/64", "per /24 (IPv4) · /64 (IPv6)"], ["16/48", "per /16 · /48"]]
    .map(([v, t]) => h("option", { value: v, selected: v === prefix }, t)));
  const form = h("form", { class: "toolbar", novalidate: true, "aria-label": "Analysis scope" }, ...scope.groups,
    h("div", { class: "group" }, ...field("Measure", metricSel)), h("div", { class: "group" }, ...field("Group talkers", prefixSel)),
    h("div", { class: "group" }, h("button", { type: "submit" }, "Analyse")), h("div", { class: "form-error", style: "flex-basis: 100%" }));
  const grid = h("div", { class: "grid" });
  main.replaceChildren(h("h1", {}, "Traffic analysis"), form, grid);
  const state = () => ({ ...scopeParams(scope.value()), metric: metricSel.value, prefix: prefixSel.value });
  form.addEventListener("submit", (ev) => { ev.preventDefault(); go("analysis", state()); });
  if (!scope.projects.length) { grid.append(h("p", { class: "muted" }, "No LogStore in this region yet.")); return; }
  const v = scope.value();
  const base = scopeRequest(v);
  const m = METRICS[metric] || "sum(bytes)";
  const refine = (clause) => go("analysis", { ...state(), filter: narrow(v.filter, clause) });
  const addrKey = (f) => (prefix ? `${f}/${prefix}` : f);
  const span = v.from && v.to ? (v.to - v.from) / 1000 : 3600;
  const interval = pickInterval(span);
  const panels = [];
  const panel = (id, title, wide) => {
    const p = h("section", { class: "panel" + (wide ? " wide" : ""), id, "aria-labelledby": id + "-title" },
      h("h2", { id: id + "-title" }, title));
    grid.append(p); panels.push(p); return p;
  };
  const failed = (p, err) => {
    if (err.code === "unauthenticated") { askKey(err.message).then(render); }
    if (err.violations.some((x) => x.field === "filter")) showErrors(form, err);
    p.append(errorBanner(err));
  };

  // 1. Traffic over time per action, stacked.
  const pTime = panel("traffic-over-time", `Traffic over time per action (${metricSel.selectedOptions[0].text.toLowerCase()}, ${interval} s buckets)`, true);
  const tTopSrc = panel("top-talkers", "Top talkers (source)");
  const tTopDst = panel("top-destinations", "Top destinations");
  const tRules = panel("rejected-by-rule", "Rejected flows by rule kind and rule");
  const tScan = panel("scanners", "Scanners (sources reaching the most distinct ports)");
  const tProto = panel("uncommon-protocols", "Uncommon protocols (not TCP, UDP, ICMP, ICMPv6)", true);
  const jobs = [];

  jobs.push(aggregate(base, { groupBy: ["action"], interval: `${interval}s`, metrics: [m], limit: 10 }).then((r) => {
    const buckets = [...new Set((r.rows || []).map((x) => x.bucketStart))].sort();
    const actions = [...new Set((r.rows || []).map((x) => x.keys[0]))].sort();
    const datasets = actions.map((a) => ({ label: a === "ACTION_UNSPECIFIED" ? "no action (NODATA/SKIPDATA)" : enumShort(a, "ACTION_"),
      backgroundColor: COLORS[a] || "#888", key: a,
      data: buckets.map((b) => { const row = (r.rows || []).find((x) => x.bucketStart === b && x.keys[0] === a); return row ? Number(row.values[0]) : 0; }) }));
    const canvas = h("canvas", { role: "img", "aria-label": `Stacked bars of ${m} per ${interval} s per action; ${fmtNum(r.matched)} records matched` });
    pTime.append(h("div", { class: "chart" }, canvas), h("p", { class: "muted", "data-matched": r.matched }, `${fmtNum(r.matched)} records matched`));
    chartOf(canvas, { type: "bar", data: { labels: buckets.map((b) => fmtTime(b).slice(5)), datasets },
      options: { animation: false, maintainAspectRatio: false, scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } },
        onClick: (ev, els) => {
          if (!els.length) return;
          const ds = datasets[els[0].datasetIndex]; const start = new Date(buckets[els[0].index]);
          go("analysis", { ...state(), from: start.toISOString(), to: new Date(start.getTime() + interval * 1000).toISOString(),
            filter: narrow(v.filter, literal("action", ds.key)) });
        } } });
  }).catch((err) => failed(pTime, err)));

  const topPanel = (p, groupField, label) => aggregate(base, { groupBy: [addrKey(groupField)], metrics: [m, "count"], limit: 10 })
    .then((r) => {
      const rows = r.rows || [];
      const canvas = h("canvas", { role: "img", "aria-label": `${label}: top ${rows.length} by ${m}` });
      p.append(h("div", { class: "chart" }, canvas), aggTable(r, [label, m, "flows"], (row) => refine(`${groupField} = ${row.keys[0]}`)));
      chartOf(canvas, { type: "bar", data: { labels: rows.map((x) => x.keys[0] || "(none)"),
        datasets: [{ label: m, data: rows.map((x) => Number(x.values[0])), backgroundColor: PALETTE[0] }] },
      options: { indexAxis: "y", animation: false, maintainAspectRatio: false, plugins: { legend: { display: false } },
        onClick: (ev, els) => { if (els.length && rows[els[0].index].keys[0]) refine(`${groupField} = ${rows[els[0].index].keys[0]}`); } } });
    }).catch((err) => failed(p, err));
  jobs.push(topPanel(tTopSrc, "src_addr", "source"), topPanel(tTopDst, "dst_addr", "destination"));

  jobs.push(aggregate({ ...base, filter: narrow(v.filter, "action = REJECT") }, { groupBy: ["rule_kind", "rule_id"], metrics: ["count", m], limit: 10 })
    .then((r) => {
      const rows = r.rows || [];
      const canvas = h("canvas", { role: "img", "aria-label": "Rejected flows per rule" });
      tRules.append(h("div", { class: "chart" }, canvas), aggTable(r, ["rule kind", "rule", "flows", m], (row) =>
        refine(`action = REJECT AND rule_id = ${row.keys[1] || '""'}`)));
      chartOf(canvas, { type: "bar", data: { labels: rows.map((x) => `${enumShort(x.keys[0], "RULE_KIND_")} ${x.keys[1]}`),
        datasets: [{ label: "rejected flows", data: rows.map((x) => Number(x.values[0])), backgroundColor: COLORS.ACTION_REJECT }] },
      options: { indexAxis: "y", animation: false, maintainAspectRatio: false, plugins: { legend: { display: false } },
        onClick: (ev, els) => { if (els.length) refine(`action = REJECT AND rule_id = ${rows[els[0].index].keys[1]}`); } } });
    }).catch((err) => failed(tRules, err)));

  jobs.push(aggregate(base, { groupBy: ["src_addr"], metrics: ["count_distinct(dst_port)", "count_distinct(dst_addr)", "count"],
    orderBy: "-count_distinct(dst_port)", limit: 10 })
    .then((r) => tScan.append(aggTable(r, ["source", "distinct ports", "distinct destinations", "flows"],
      (row) => refine(`src_addr = ${row.keys[0]}`)))).catch((err) => failed(tScan, err)));

  jobs.push(aggregate({ ...base, filter: narrow(v.filter, "log_status = OK AND NOT protocol IN (tcp, udp, icmp, icmpv6)") },
    { groupBy: ["protocol", "src_addr", "dst_addr"], metrics: ["count", m], limit: 20 })
    .then((r) => tProto.append((r.rows || []).length ? aggTable(r, ["protocol", "source", "destination", "flows", m],
      (row) => refine(`protocol = ${row.keys[0]}`)) : h("p", { class: "muted" }, "None in this range.")))
    .catch((err) => failed(tProto, err)));
  await Promise.all(jobs);
  main.dataset.renderMs = String(Math.round(performance.now() - t0));
  main.dataset.ready = "1";
};

function aggTable(r, headers, onRow) {
  const rows = r.rows || [];
  const nKeys = (r.groupBy || []).length;
  return h("table", { "aria-label": headers[0] },
    h("thead", {}, h("tr", {}, headers.map((t, i) => h("th", { scope: "col", class: i >= nKeys ? "num" : "" }, t)))),
    h("tbody", {}, rows.map((row) => {
      // A record without the field (a NODATA record has no addresses) has an empty key: no filter to narrow to.
      const blank = (row.keys || []).some((k) => k === "");
      const attrs = blank ? {} : { class: "click", tabindex: 0, title: "narrow the filter to this row",
        onclick: () => onRow(row), onkeydown: (e) => { if (e.key === "Enter") onRow(row); } };
      return h("tr", attrs,
    (row.keys || []).map((k) => h("td", { class: "mono" + (k ? "" : " muted") }, k ? k.replace(/^(RULE_KIND_|ACTION_)/, "") : "(none)")),
    (row.values || []).map((x) => h("td", { class: "num", "data-value": x }, fmtNum(x))));
    })),
    r.other && (r.other.values || []).some((x) => Number(x)) ? h("tfoot", {}, h("tr", {},
      h("td", { colspan: nKeys, class: "muted" }, "other"), (r.other.values || []).map((x) => h("td", { class: "num" }, fmtNum(x))))) : null);
}

// ---------------------------------------------------------------------------------------------
window.addEventListener("hashchange", render);
document.addEventListener("DOMContentLoaded", () => {
  setupKeyDialog();
  document.getElementById("region-select").addEventListener("change", (e) => {
    const { page } = route();
    go(page.split("/")[0], { region: e.target.value });
  });
  render();
});

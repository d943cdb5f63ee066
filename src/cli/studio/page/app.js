// glimpse studio's page: one card per device, updated from the live stream (server-sent
// events, no polling), and the teaching actions as POSTs answered with the device's ack.
// Labels and everything else from the network go through textContent: never innerHTML.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const cards = new Map(); // device id -> { root, parts, state }

function api(path) {
  return token ? `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : path;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// One line for an ack: "accepted (rock: 12)", "duplicate", "rejected: reason".
function ackText(ack) {
  if (ack.error) return ack.error;
  let text = ack.status || "?";
  if (ack.label !== undefined && ack.count !== undefined) text += ` (${ack.label}: ${ack.count})`;
  if (ack.head_version !== undefined) text += ` head v${ack.head_version}`;
  if (ack.deleted !== undefined) text += `, ${ack.deleted} deleted`;
  if (ack.reason) text += `: ${ack.reason}`;
  return text;
}

function showAck(node, ack) {
  node.textContent = ackText(ack);
  // Only the verdict class changes: the node keeps the classes it was made with.
  node.classList.remove("accepted", "duplicate", "rejected", "error");
  node.classList.add(ack.error ? "error" : ack.status || "error");
}

async function post(path, body, contentType) {
  try {
    const res = await fetch(api(path), {
      method: "POST",
      headers: { "content-type": contentType || "application/json", "x-glimpse-studio": "1" },
      body,
    });
    return await res.json();
  } catch (err) {
    return { error: String(err) };
  }
}

// Uploads one file with progress (fetch has no upload progress; XMLHttpRequest does).
function upload(device, label, file, row) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    const url = api(`/api/devices/${encodeURIComponent(device)}/photo?label=${encodeURIComponent(label)}`);
    xhr.open("POST", url);
    xhr.setRequestHeader("x-glimpse-studio", "1");
    xhr.setRequestHeader("content-type", "application/octet-stream");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) row.bar.value = e.loaded / e.total; };
    xhr.onload = () => {
      let ack;
      try { ack = JSON.parse(xhr.responseText); } catch { ack = { error: `HTTP ${xhr.status}` }; }
      row.bar.value = 1;
      showAck(row.ack, ack);
      resolve(ack);
    };
    xhr.onerror = () => { showAck(row.ack, { error: "network error" }); resolve(null); };
    xhr.send(file);
  });
}

function classesOf(state) {
  const names = new Set(Object.keys(state.labels || {}));
  for (const c of (state.report && state.report.classes) || []) names.add(c);
  return [...names].sort();
}

function card(device) {
  const p = {};
  p.thumb = el("img", { class: "thumb", alt: "latest frame" });
  p.name = el("div", { class: "name", text: device });
  p.status = el("span", { class: "badge status", text: "unknown" });
  p.prediction = el("div", { class: "prediction", text: "–" });
  p.meta = el("div", { class: "meta" });
  p.frameButtons = el("div", { class: "row frame-labels" });
  p.newLabel = el("input", { type: "text", class: "new-label", placeholder: "new label", maxlength: "64" });
  p.frameAck = el("div", { class: "ack frame-ack" });
  p.photoLabel = el("input", { type: "text", class: "photo-label", placeholder: "label", list: `classes-${device}` });
  p.classList = el("datalist", { id: `classes-${device}` });
  p.files = el("input", { type: "file", class: "photos", accept: "image/*", capture: "environment", multiple: "" });
  p.fileList = el("ul", { class: "files" });
  p.commandAck = el("div", { class: "ack command-ack" });
  p.forgetLabel = el("select", { class: "forget-label" });
  p.samples = el("table", { class: "samples" });
  p.report = el("div", { class: "report" });
  const entry = { p, state: { device, labels: {} } };

  const labelFrame = async (label) => {
    // entry.state, not a captured copy: every device event replaces it.
    const now = entry.state;
    const frame = now.thumbnail_frame ?? (now.prediction && now.prediction.frame_id);
    if (frame === undefined || frame === null) return showAck(p.frameAck, { error: "no frame seen yet" });
    p.frameAck.textContent = `sending ${label}…`;
    const ack = await post(`/api/devices/${encodeURIComponent(device)}/frame`, JSON.stringify({ label, frame_id: frame }));
    showAck(p.frameAck, ack);
  };
  p.addLabel = el("button", { class: "add-label", text: "Label", on: { click: () => {
    const label = p.newLabel.value.trim();
    if (label) labelFrame(label);
  } } });
  p.files.addEventListener("change", async () => {
    const label = p.photoLabel.value.trim();
    const files = [...p.files.files];
    p.files.value = "";
    if (!label) return showAck(p.commandAck, { error: "choose a label for the photos first" });
    p.fileList.replaceChildren();
    const rows = files.map((f) => {
      const row = { bar: el("progress", { max: "1", value: "0" }), ack: el("span", { class: "ack" }) };
      p.fileList.append(el("li", {}, el("span", { text: `${f.name} ` }), row.bar, " ", row.ack));
      return row;
    });
    // One at a time: the device learns one sample after another anyway.
    for (let i = 0; i < files.length; i++) await upload(device, label, files[i], rows[i]);
  });
  const command = async (name, args) => {
    p.commandAck.textContent = `${name}…`;
    const ack = await post(`/api/devices/${encodeURIComponent(device)}/command/${name}`, JSON.stringify(args || {}));
    showAck(p.commandAck, ack);
    if (name !== "labels") post(`/api/devices/${encodeURIComponent(device)}/command/labels`, "{}");
  };
  p.retrain = el("button", { class: "retrain", text: "Retrain", on: { click: () => command("retrain") } });
  const rollback = el("button", { class: "secondary", text: "Roll back", on: { click: () => command("rollback") } });
  const forget = el("button", { class: "secondary", text: "Forget", on: { click: () => {
    const label = p.forgetLabel.value;
    if (label && confirm(`Delete every sample of "${label}"?`)) command("forget", { label });
  } } });

  const root = el("article", { class: "card", "data-device": device },
    el("div", { class: "top" }, p.thumb,
      el("div", {}, p.name, p.status, p.prediction, p.meta)),
    el("section", {}, el("h2", { text: "Label what it sees now" }), p.frameButtons,
      el("div", { class: "row" }, p.newLabel, p.addLabel), p.frameAck),
    el("section", {}, el("h2", { text: "Teach with photos" }),
      el("div", { class: "row" }, p.photoLabel, p.classList, p.files), p.fileList),
    el("section", {}, el("h2", { text: "Head" }),
      el("div", { class: "row" }, p.retrain, rollback, p.forgetLabel, forget), p.commandAck),
    el("section", {}, el("h2", { text: "Samples per label" }), p.samples),
    el("section", {}, el("h2", { text: "Last training" }), p.report));
  entry.root = root;
  entry.labelFrame = labelFrame;
  return entry;
}

function entryFor(device) {
  let entry = cards.get(device);
  if (!entry) {
    entry = card(device);
    cards.set(device, entry);
    document.getElementById("empty")?.remove();
    const main = document.getElementById("devices");
    const after = [...main.children].find((c) => c.dataset.device > device);
    main.insertBefore(entry.root, after || null);
  }
  return entry;
}

function renderPrediction(entry) {
  const { p, state } = entry;
  const pr = state.prediction;
  if (!pr) return;
  if (pr.label !== undefined) {
    p.prediction.textContent = `${pr.label} ${Math.round((pr.score || 0) * 100)}%`;
  } else {
    const top = (pr.imagenet_top_k || [])[0];
    p.prediction.textContent = top ? `(imagenet) ${top.label}` : "–";
  }
  p.prediction.dataset.label = pr.label ?? "";
}

function table(rows, header) {
  const t = el("table");
  if (header) t.append(el("tr", {}, ...header.map((h) => el("th", { text: h }))));
  for (const r of rows) t.append(el("tr", {}, ...r.map((c) => (c instanceof Node ? c : el("td", { text: String(c) })))));
  return t;
}

function renderReport(p, report) {
  if (!report) return p.report.replaceChildren(el("div", { class: "meta", text: "no training yet" }));
  const pct = (x) => (typeof x === "number" ? `${(x * 100).toFixed(1)}%` : "–");
  const classes = report.classes || [];
  const v = report.validation || {};
  const verdict = report.accepted ? `v${report.version} accepted` : `kept v${report.active_version ?? "–"}`;
  const summary = el("div", { class: "meta", text:
    `${verdict} (${report.trigger || "?"}): accuracy ${pct(report.accuracy)} on ${report.val_count ?? "?"} held out; ` +
    `${report.train_count ?? "?"} trained; gate: ${(report.gate && report.gate.reason) || "–"}` });
  const perClass = table(classes.map((c, i) => [c, pct((v.precision || [])[i]), pct((v.recall || [])[i]), (v.support || [])[i] ?? ""]),
    ["class", "precision", "recall", "support"]);
  const confusion = table(classes.map((c, i) => [c, ...classes.map((_, j) => {
    const cell = el("td", { text: String(((v.confusion || [])[i] || [])[j] ?? "") });
    if (i === j) cell.className = "diag";
    return cell;
  })]), ["true \\ predicted", ...classes]);
  confusion.className = "confusion";
  p.report.replaceChildren(summary, perClass, confusion);
}

function renderDevice(entry) {
  const { p, state } = entry;
  const status = state.availability || "unknown";
  p.status.textContent = status;
  p.status.className = `badge status ${status}`;
  const fps = state.fps_out != null ? `${state.fps_out.toFixed(1)} fps` : "– fps";
  p.meta.textContent = `head ${state.head_version != null ? "v" + state.head_version : "none"} · ${fps}`;
  renderPrediction(entry);
  const classes = classesOf(state);
  // Buttons are rebuilt only when the classes change, so a tap is never lost to a redraw.
  if (entry.classes === classes.join("\n")) return renderRest(entry);
  entry.classes = classes.join("\n");
  p.frameButtons.replaceChildren(...classes.map((c) =>
    el("button", { class: "label-button", "data-label": c, text: c, on: { click: () => entry.labelFrame(c) } })));
  p.classList.replaceChildren(...classes.map((c) => el("option", { value: c })));
  const chosen = p.forgetLabel.value;
  p.forgetLabel.replaceChildren(el("option", { value: "", text: "label…" }), ...classes.map((c) => el("option", { value: c, text: c })));
  p.forgetLabel.value = classes.includes(chosen) ? chosen : "";
  renderRest(entry);
}

function renderRest(entry) {
  const { p, state } = entry;
  const labels = Object.entries(state.labels || {});
  p.samples.replaceWith(p.samples = table(labels.length ? labels : [["none yet", ""]], ["label", "samples"]));
  p.samples.className = "samples";
  renderReport(p, state.report);
}

function connect() {
  const link = document.getElementById("link");
  const source = new EventSource(api("/api/events"));
  source.onopen = () => { link.textContent = "live"; };
  source.onerror = () => { link.textContent = "reconnecting…"; };
  source.addEventListener("device", (e) => {
    const data = JSON.parse(e.data);
    const entry = entryFor(data.device);
    const keep = { thumbnail_frame: entry.state.thumbnail_frame };
    entry.state = Object.assign(data, data.thumbnail_frame == null ? keep : {});
    renderDevice(entry);
  });
  source.addEventListener("prediction", (e) => {
    const data = JSON.parse(e.data);
    const entry = entryFor(data.device);
    entry.state.prediction = data.prediction;
    renderPrediction(entry);
  });
  source.addEventListener("thumbnail", (e) => {
    const data = JSON.parse(e.data);
    const entry = entryFor(data.device);
    entry.state.thumbnail_frame = data.frame_id;
    entry.p.thumb.src = `data:image/jpeg;base64,${data.jpeg}`;
    entry.p.thumb.dataset.frame = data.frame_id ?? "";
  });
}

connect();

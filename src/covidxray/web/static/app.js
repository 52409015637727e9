// covidxray upload page: one request per file to POST /api/v1/predict, results rendered as cards.
"use strict";

const CLASS_NAMES = { covid: "COVID-19", normal: "Normal", pneumonia: "Pneumonia" };
const CONCURRENCY = 2;
let maxUploadBytes = 20 * 1024 * 1024;

const $ = (sel, root = document) => root.querySelector(sel);
const displayName = (cls) => CLASS_NAMES[cls] || cls;
const percent = (p) => `${(100 * p).toFixed(1)}%`;

function formatBytes(n) {
  return n >= 1024 * 1024 ? `${(n / 1024 / 1024).toFixed(n % (1024 * 1024) ? 1 : 0)} MB` : `${Math.ceil(n / 1024)} kB`;
}

// ---- model card -------------------------------------------------------------------------------------------
function scalarEntries(obj, prefix = "", depth = 0, out = []) {
  for (const [key, value] of Object.entries(obj || {})) {
    const name = prefix ? `${prefix}.${key}` : key;
    if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      if (depth < 2) scalarEntries(value, name, depth + 1, out);
    } else if (typeof value === "number") {
      out.push([name, Number.isInteger(value) ? String(value) : value.toFixed(3)]);
    } else if (typeof value === "string" || typeof value === "boolean") {
      out.push([name, String(value)]);
    } else if (Array.isArray(value) && value.length <= 8 && value.every((v) => typeof v !== "object")) {
      out.push([name, value.join(", ")]);
    }
  }
  return out;
}

async function loadModelCard() {
  const dl = $("#model-card");
  try {
    const res = await fetch("/api/v1/model");
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const card = await res.json();
    maxUploadBytes = card.limits.max_upload_bytes;
    $("#max-upload").textContent = formatBytes(maxUploadBytes);
    const rows = [
      ["Architecture", card.architecture],
      ["Version", card.version],
      ["Classes", card.classes.map(displayName).join(", ")],
    ];
    if (card.decision_rule) rows.push(["Decision rule", card.decision_rule]);
    for (const [name, p] of Object.entries(card.operating_points || {})) {
      const mark = name === card.decision ? " (decides)" : "";
      rows.push([`Operating point ${name}${mark}`, `p(${p.class}) ≥ ${Number(p.threshold).toFixed(3)}` + (p.rule ? `, ${p.rule}` : "")]);
    }
    if (card.operating_point) rows.push(["Operating point", scalarEntries(card.operating_point).map(([k, v]) => `${k} ${v}`).join("; ")]);
    for (const [k, v] of scalarEntries(card.metrics).slice(0, 12)) rows.push([`Metric: ${k}`, v]);
    for (const [k, v] of scalarEntries(card.data).slice(0, 8)) rows.push([`Data: ${k}`, v]);
    if (card.intended_use) rows.push(["Intended use", card.intended_use]);
    if (card.backend) rows.push(["Backend", card.backend]);
    rows.push(["Notice", card.notice]);
    if (card.backend && card.backend !== "torch") {
      const explain = $("#explain");
      explain.checked = false;
      explain.disabled = true;
      explain.parentElement.title = "Grad-CAM needs the server's torch backend";
    }
    dl.replaceChildren();
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      dl.append(dt, dd);
    }
  } catch (err) {
    dl.replaceChildren();
    const dd = document.createElement("dd");
    dd.textContent = `Model information unavailable (${err.message}).`;
    dl.append(dd);
  }
}

// ---- result cards -----------------------------------------------------------------------------------------
function newCard(file, anchor) {
  const card = $("#result-template").content.firstElementChild.cloneNode(true);
  $(".file-name", card).textContent = file.name;
  $("#results").insertBefore(card, anchor);
  $("#empty").hidden = true;
  return card;
}

function showError(card, message, hint = "") {
  card.setAttribute("aria-busy", "false");
  card.classList.add("failed");
  $(".status", card).hidden = true;
  const err = $(".error", card);
  err.textContent = message;
  if (hint) {
    const small = document.createElement("span");
    small.className = "hint";
    small.textContent = `Hint: ${hint}.`;
    err.append(small);
  }
  err.hidden = false;
}

function renderBars(container, probabilities, label) {
  container.replaceChildren();
  const entries = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
  for (const [cls, p] of entries) {
    const row = document.createElement("div");
    row.className = "bar-row" + (cls === label ? " top" : "");
    const name = document.createElement("span");
    name.className = "bar-name";
    name.textContent = displayName(cls);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.width = percent(p);
    bar.append(fill);
    const pct = document.createElement("span");
    pct.className = "bar-pct";
    pct.textContent = percent(p);
    row.append(name, bar, pct);
    container.append(row);
  }
  container.hidden = false;
}

function renderResult(card, result) {
  card.setAttribute("aria-busy", "false");
  card.dataset.label = result.label;
  $(".status", card).hidden = true;

  const preview = $(".preview", card);
  preview.src = `data:image/png;base64,${result.preview_png}`;
  preview.alt = `X-ray ${result.file} (${result.width}×${result.height} ${result.format.toUpperCase()})`;
  $(".figure", card).hidden = false;

  if (result.gradcam_png) {
    const heatmap = $(".heatmap", card);
    const caption = $(".caption", card);
    const toggle = $(".toggle", card);
    heatmap.src = `data:image/png;base64,${result.gradcam_png}`;
    heatmap.alt = `Grad-CAM heatmap for ${result.file}: warm colours mark regions that drove the prediction`;
    toggle.hidden = false;
    toggle.addEventListener("click", () => {
      const on = toggle.getAttribute("aria-pressed") !== "true";
      toggle.setAttribute("aria-pressed", String(on));
      toggle.textContent = on ? "Show X-ray" : "Show Grad-CAM heatmap";
      heatmap.hidden = !on;
      preview.hidden = on;
      caption.textContent = on ? "Grad-CAM overlay: where the model looked" : "X-ray as decoded by the server";
    });
  }

  const top = result.probabilities[result.label];
  $(".label", card).textContent = displayName(result.label) + (top !== undefined ? ` (${percent(top)})` : "");
  $(".prediction", card).hidden = false;
  const why = $(".why", card);
  if (result.decision) {
    const d = result.decision;
    why.textContent = d.point
      ? `Why: p(${displayName(d.class)}) = ${percent(d.probability)} ${d.met ? "≥" : "<"} threshold ${percent(d.threshold)} ` +
        `of the ${d.point} operating point${d.rule ? ` (${d.rule})` : ""}` +
        (d.met ? "." : `, so the most probable other class.`)
      : "Why: the most probable class (the model stores no operating point).";
    why.hidden = false;
  }
  renderBars($(".bars", card), result.probabilities, result.label);

  const warnings = $(".warnings", card);
  warnings.replaceChildren();
  for (const w of result.warnings) {
    const li = document.createElement("li");
    li.textContent = `Warning: ${w}`;
    warnings.append(li);
  }
  warnings.hidden = result.warnings.length === 0;
}

async function analyse(file, card) {
  if (file.size > maxUploadBytes) {
    showError(card, `${file.name}: larger than the upload limit of ${formatBytes(maxUploadBytes)}.`);
    return;
  }
  const body = new FormData();
  body.append("files", file, file.name);
  const explain = $("#explain").checked;
  try {
    const res = await fetch(`/api/v1/predict?preview=true&explain=${explain}`, { method: "POST", body });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) {
      showError(card, `${data.message || `${file.name}: the server answered HTTP ${res.status}`}.`, data.hint);
      return;
    }
    renderResult(card, data.predictions[0]);
  } catch (err) {
    showError(card, `${file.name}: the request failed (${err.message}).`);
  }
}

async function analyseAll(fileList) {
  // Newest batch first, files of one batch in the order chosen.
  const anchor = $("#results").firstElementChild;
  const queue = Array.from(fileList).map((file) => [file, newCard(file, anchor)]);
  const worker = async () => {
    while (queue.length) {
      const [file, card] = queue.shift();
      await analyse(file, card);
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
}

// ---- input: file picker, drag and drop, keyboard ----------------------------------------------------------
function setup() {
  const input = $("#files");
  const zone = $("#dropzone");

  input.addEventListener("change", () => {
    if (input.files.length) analyseAll(input.files).finally(() => { input.value = ""; });
  });
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      input.click();
    }
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => {
      e.preventDefault();
      zone.classList.add("dragover");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragover"));
  }
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) analyseAll(e.dataTransfer.files);
  });
  // A file dropped next to the zone must not make the browser navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  $("#clear").addEventListener("click", () => {
    $("#results").replaceChildren();
    $("#empty").hidden = false;
  });
  loadModelCard();
}

document.addEventListener("DOMContentLoaded", setup);

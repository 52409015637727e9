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
// A readable card from GET /api/v1/model: short sentences, percentages with their 95% intervals.
const pct1 = (v) => `${(100 * v).toFixed(1)}%`;
const withCi = (m) => {
  if (m === null || m === undefined) return null;
  if (typeof m === "number") return pct1(m);
  if (typeof m.value !== "number") return null;
  const ci = Array.isArray(m.ci) && m.ci.length === 2 ? ` (95% CI ${pct1(m.ci[0])} to ${pct1(m.ci[1])})` : "";
  return pct1(m.value) + ci;
};
const count = (n) => Number(n).toLocaleString("en-US");

function describePreprocessing(p) {
  if (!p) return "";
  const size = `${p.image_size}×${p.image_size} px`;
  const how = { squash: "the whole image resized", pad: "the whole image padded to a square",
                crop: "the centre square", lungcrop: "cropped to the lung fields (plus a margin)" }[p.resize] || p.resize;
  const tone = p.intensity === "equalize" ? ", histogram-equalised"
    : p.intensity === "equalize_lungs" ? ", histogram-equalised on the lung fields"
    : p.intensity && p.intensity !== "none" ? `, ${p.intensity} contrast` : "";
  return `${size} grayscale input: ${how}${tone}`;
}

function performanceSentence(card) {
  const op = card.operating_point || {};
  const t = op.test;
  if (t && typeof t === "object" && t.sensitivity) {
    const cls = displayName(op.class || "covid");
    const imgs = t.n_images ? `${count(t.n_images)} held-out test images` : "the held-out test images";
    const pats = t.n_patients ? ` of ${count(t.n_patients)} patients` : "";
    return `On ${imgs}${pats}: ${cls} sensitivity ${withCi(t.sensitivity)}, specificity ${withCi(t.specificity)}.`;
  }
  return null;
}

function validationSentence(metrics) {
  const v = (metrics || {}).val || {};
  const parts = [];
  if (typeof v.val_acc === "number") parts.push(`accuracy ${pct1(v.val_acc)}`);
  if (typeof v.val_auc_macro === "number") parts.push(`macro ROC AUC ${v.val_auc_macro.toFixed(3)}`);
  if (typeof v.val_auc_covid === "number") parts.push(`COVID-19 ROC AUC ${v.val_auc_covid.toFixed(3)}`);
  return parts.length ? `Validation split: ${parts.join(", ")}.` : null;
}

function trainingSentence(data) {
  const train = ((data || {}).counts || {}).train;
  if (!train) return null;
  const bySource = Object.entries(train).map(([src, byLabel]) => [src, Object.values(byLabel).reduce((a, b) => a + b, 0)]);
  const total = bySource.reduce((a, [, n]) => a + n, 0);
  return `${count(total)} training images from ${bySource.length} public collections (` +
    bySource.map(([src, n]) => `${src} ${count(n)}`).join(", ") + "), split by patient.";
}

function segmenterSentence(seg) {
  if (!seg || !seg.version) return null;
  const d = Object.entries(seg.test_dice || {}).map(([src, v]) => `${v.toFixed(3)} on ${src}`).join(", ");
  return `Outlined by the covidxray lung segmenter ${seg.version}` + (d ? ` (held-out Dice ${d}).` : ".");
}

function viewCheckSentence(vc) {
  if (!vc || !vc.version) return null;
  const at = ((vc.cv || {}).at || {})[String(vc.threshold)];
  const cv = at ? ` (patient-grouped cross-validation: ${(100 * at.laterals_flagged).toFixed(0)}% of lateral views ` +
    `flagged, ${(100 * at.laterals_flagged_with_lung_check).toFixed(0)}% with the lung check)` : "";
  return `Lateral views are flagged by the covidxray view check ${vc.version} at p(lateral) \u2265 ${vc.threshold}${cv}.`;
}

function cardRows(card) {
  const rows = [
    ["What it does", `Sorts a chest X-ray into ${card.classes.map(displayName).join(", ")}.`],
  ];
  if (card.decision_rule) {
    const rule = card.decision_rule.replace(/\b(covid|normal|pneumonia)\b/g, (c) => displayName(c));
    rows.push(["How it decides", rule.charAt(0).toUpperCase() + rule.slice(1) + "."]);
  }
  for (const [name, p] of Object.entries(card.operating_points || {})) {
    const mark = name === card.decision ? " — this one decides" : "";
    rows.push([`Operating point "${name}"`, `p(${displayName(p.class)}) ≥ ${Number(p.threshold).toFixed(3)}` +
      (p.rule ? `, chosen for ${p.rule}` : "") + mark]);
  }
  const perf = performanceSentence(card);
  if (perf) rows.push(["How well it did", perf]);
  const val = validationSentence(card.metrics);
  if (val) rows.push(["Validation", val]);
  const train = trainingSentence(card.data);
  if (train) rows.push(["Trained on", train]);
  const net = [card.architecture, describePreprocessing(card.preprocessing)].filter(Boolean).join(", ");
  rows.push(["Network", net]);
  const seg = segmenterSentence(card.lung_segmenter);
  if (seg) rows.push(["Lung fields", seg]);
  const view = viewCheckSentence(card.view_check);
  if (view) rows.push(["View", view]);
  if (card.intended_use) rows.push(["Intended use", card.intended_use]);
  rows.push(["Version", `${card.version}${card.backend ? ` (${card.backend} backend)` : ""}`]);
  rows.push(["Notice", card.notice]);
  return rows;
}

async function loadModelCard() {
  const dl = $("#model-card");
  try {
    const res = await fetch("/api/v1/model");
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const card = await res.json();
    maxUploadBytes = card.limits.max_upload_bytes;
    $("#max-upload").textContent = formatBytes(maxUploadBytes);
    if (card.backend && card.backend !== "torch") {
      const explain = $("#explain");
      explain.checked = false;
      explain.disabled = true;
      explain.parentElement.title = "Grad-CAM needs the server's torch backend";
    }
    dl.replaceChildren();
    for (const [k, v] of cardRows(card)) {
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
  preview.alt = `X-ray ${result.file} (${result.width}×${result.height} ${result.format.toUpperCase()})` +
    (result.lungs ? ", lung fields outlined in cyan" : "");
  $(".figure", card).hidden = false;
  const xrayCaption = result.lungs ? "X-ray as decoded by the server; cyan: lung fields found by the segmenter"
    : "X-ray as decoded by the server";
  $(".caption", card).textContent = xrayCaption;
  if (result.lungs) {
    const l = result.lungs;
    const lungs = $(".lungs", card);
    lungs.textContent = `Lung fields: ${l.components} region${l.components === 1 ? "" : "s"} covering ` +
      `${percent(l.area_fraction)} of the image` + (l.quality === "ok" ? "." : ` (implausible: ${l.quality.replace("_", " ")}).`);
    lungs.hidden = false;
  }
  if (result.gradcam_png) {
    const share = $(".lung-share", card);
    share.textContent = typeof result.gradcam_lung_share === "number"
      ? `${percent(result.gradcam_lung_share)} of the heatmap lies inside the lung fields.`
      : "The heatmap is empty (no region raised this class's score), so no share inside the lung fields.";
    share.hidden = false;
  }

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
      caption.textContent = on ? "Grad-CAM overlay: where the model looked; cyan: lung fields" : xrayCaption;
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

// A minimal, offline renderer of /openapi.json: endpoints, parameters, bodies, responses and schemas.
"use strict";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function refName(ref) {
  return ref.split("/").pop();
}

function typeOf(schema) {
  if (!schema) return "";
  if (schema.$ref) return refName(schema.$ref);
  if (schema.anyOf) return schema.anyOf.map(typeOf).join(" | ");
  if (schema.type === "array") return `array of ${typeOf(schema.items)}`;
  if (schema.type === "object" && schema.additionalProperties) return `map of ${typeOf(schema.additionalProperties)}`;
  return schema.format ? `${schema.type} (${schema.format})` : schema.type || "any";
}

function schemaTable(schema, spec) {
  if (schema && schema.$ref) schema = spec.components.schemas[refName(schema.$ref)];
  const props = (schema && schema.properties) || {};
  const table = el("table");
  const head = el("tr");
  for (const h of ["field", "type", "required", "description"]) head.append(el("th", h));
  table.append(head);
  const required = new Set(schema.required || []);
  for (const [name, prop] of Object.entries(props)) {
    const row = el("tr");
    row.append(el("td", name, "mono"), el("td", typeOf(prop)), el("td", required.has(name) ? "yes" : ""),
      el("td", prop.description || prop.title || ""));
    table.append(row);
  }
  return table;
}

function renderOperation(path, method, op, spec) {
  const section = el("section", undefined, "endpoint");
  const h = el("h2");
  h.append(el("span", method.toUpperCase(), `method ${method}`), el("span", ` ${path}`, "mono"));
  section.append(h);
  if (op.summary) section.append(el("p", op.summary, "summary"));
  if (op.description) section.append(el("p", op.description));

  if (op.parameters && op.parameters.length) {
    section.append(el("h3", "Parameters"));
    const table = el("table");
    const head = el("tr");
    for (const t of ["name", "in", "type", "default", "description"]) head.append(el("th", t));
    table.append(head);
    for (const p of op.parameters) {
      const row = el("tr");
      const def = p.schema && p.schema.default !== undefined ? String(p.schema.default) : "";
      row.append(el("td", p.name, "mono"), el("td", p.in), el("td", typeOf(p.schema)), el("td", def),
        el("td", p.description || ""));
      table.append(row);
    }
    section.append(table);
  }
  if (op.requestBody) {
    for (const [mime, body] of Object.entries(op.requestBody.content)) {
      section.append(el("h3", `Request body (${mime})`));
      section.append(schemaTable(body.schema, spec));
    }
  }
  section.append(el("h3", "Responses"));
  const list = el("dl", undefined, "responses");
  for (const [code, resp] of Object.entries(op.responses || {})) {
    const schema = resp.content && resp.content["application/json"] && resp.content["application/json"].schema;
    list.append(el("dt", code, "mono"), el("dd", `${resp.description || ""}${schema ? ` → ${typeOf(schema)}` : ""}`));
  }
  section.append(list);
  return section;
}

async function render() {
  const root = document.getElementById("endpoints");
  try {
    const res = await fetch("/openapi.json");
    const spec = await res.json();
    document.getElementById("title").textContent = `${spec.info.title} API ${spec.info.version}`;
    document.getElementById("description").textContent = spec.info.description || "";
    document.getElementById("example").textContent = document
      .getElementById("example").textContent.replace("HOST", window.location.host);
    root.replaceChildren();
    for (const [path, ops] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(ops)) root.append(renderOperation(path, method, op, spec));
    }
    root.append(el("h2", "Schemas"));
    for (const [name, schema] of Object.entries((spec.components && spec.components.schemas) || {})) {
      const section = el("section", undefined, "schema");
      section.id = `schema-${name}`;
      section.append(el("h3", name, "mono"));
      if (schema.description) section.append(el("p", schema.description));
      section.append(schemaTable(schema, spec));
      root.append(section);
    }
  } catch (err) {
    root.replaceChildren(el("p", `Cannot load /openapi.json: ${err.message}`, "error"));
  }
}

document.addEventListener("DOMContentLoaded", render);

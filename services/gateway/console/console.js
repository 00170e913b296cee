// The molm3d web console: one page, three views (#/molecule, #/search, #/bulk) over the gateway's
// HTTP JSON API on the same origin. No framework, no build step; 3Dmol.js (vendor/) draws the
// conformer. The API token lives in sessionStorage (this tab only) and goes with every data call.
"use strict";

(() => {
  const TOKEN_KEY = "molm3d.token";
  const POLL_MS = 1000;
  // Suggested questions: the first wording of each task in molm3d_core/data/questions.py; the key
  // names the property head (molm3d_core/targets.py) shown beside the answer.
  const SUGGESTIONS = [
    ["homo", "HOMO", "What is the HOMO energy of this molecule?"],
    ["lumo", "LUMO", "What is the LUMO energy of this molecule?"],
    ["gap", "gap", "What is the HOMO-LUMO gap of this molecule?"],
    ["mw", "MW", "What is the molecular weight of this molecule?"],
    ["logp", "LogP", "What is the LogP of this molecule?"],
    ["tpsa", "TPSA", "What is the topological polar surface area (TPSA) of this molecule?"],
    ["classes", "classes", "Which chemical classes does this molecule belong to?"],
  ];
  const HEAD_WORDS = [
    ["gap", /\bgap\b/i], ["homo", /\bhomo\b|highest occupied/i], ["lumo", /\blumo\b|lowest unoccupied/i],
    ["mw", /molecular weight|molar mass/i], ["logp", /\blog ?p\b|partition/i], ["tpsa", /\btpsa\b|polar surface/i],
  ];
  const FILE_FORMATS = { sdf: "sdf", mol: "mol", xyz: "xyz", pdb: "pdb", smi: "smiles", txt: "smiles" };

  const $ = (selector, root = document) => root.querySelector(selector);
  const state = {
    token: null,
    viewer: null,
    molecule: null,     // the MoleculeInput shown: {text, format?, id?}
    data: null,         // its /v1/molecule answer
    shownKey: null,     // what the molecule page shows, to skip reloading it on a hash change
    page: null,         // the page shown
    captionAbort: null,
    job: null,          // {id, timer, complete}
    downloads: [],      // blob URLs to revoke
  };

  // ---------------------------------------------------------------------------------------------
  // API calls and errors

  class ApiError extends Error {
    constructor(status, code, message, retryAfterS = null) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfterS = retryAfterS;
    }
  }

  async function api(path, { method = "POST", body, raw = false, signal } = {}) {
    const headers = {};
    if (state.token) headers.authorization = `Bearer ${state.token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method, headers, signal, cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "network_error", "the server did not answer (is molm3d serve running?)");
    }
    if (!response.ok) {
      const err = await errorOf(response);
      if (err.status === 401 && path !== "/v1/models") signOut("The server refused the token; sign in again.");
      throw err;
    }
    return raw ? response : response.json();
  }

  async function errorOf(response) {
    let detail = {};
    try {
      detail = (await response.json()).error || {};
    } catch (_) { /* not our JSON: the status line says enough */ }
    return errorFrom(detail, response.status, response.headers.get("retry-after"), response.statusText);
  }

  function errorFrom(detail, status, retryAfterHeader, fallback) {
    const retryMs = Number(detail.retry_after_ms || 0) || Number(retryAfterHeader || 0) * 1000;
    return new ApiError(
      status, detail.code || `http_${status}`, detail.message || fallback || "request failed",
      retryMs ? Math.max(1, Math.ceil(retryMs / 1000)) : null,
    );
  }

  // Shows an error in `element`: our code, then a sentence a person can act on.
  function showError(element, err) {
    element.replaceChildren();
    if (!err) return;
    if (!(err instanceof ApiError)) err = new ApiError(0, "error", String(err.message || err));
    let message = err.message;
    if (err.status === 429) {
      // The gateway's reason (admission.py: "busy: ...; retry in N s"), its retry said once, up front.
      const reason = err.message.replace(/^busy:\s*/, "").replace(/;?\s*retry in \d+ s\.?$/, "");
      message = `busy, retry in ${err.retryAfterS || 1} s` + (reason ? ` (${reason})` : "");
    }
    else if (err.code === "bulk_unavailable" && /kafka/i.test(err.message)) {
      message = `bulk jobs need Kafka: ${err.message}`;
    }
    const code = document.createElement("code");
    code.textContent = err.code;
    const text = document.createElement("span");
    text.className = message.includes("\n") ? "message mono" : "message"; // RDKit points at the error column
    text.textContent = message;
    element.append(code, " ", text);
    element.dataset.code = err.code;
  }

  function clearError(element) {
    element.replaceChildren();
    delete element.dataset.code;
  }

  // ---------------------------------------------------------------------------------------------
  // Sign in / out

  async function signIn(token, { quiet = false } = {}) {
    state.token = token;
    const error = $("#login-error");
    try {
      const models = await api("/v1/models", { method: "GET" });
      sessionStorage.setItem(TOKEN_KEY, token);
      clearError(error);
      const model = (models.data || [])[0];
      $("#model-id").textContent = model ? `model ${model.id}` : "";
      enterApp();
    } catch (err) {
      state.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      if (!quiet) {
        if (err.status === 401) err.message = "this token is refused by the server";
        showError(error, err);
      }
      $("#token").focus();
    }
  }

  // Signing out forgets the token and reloads: nothing of the last session stays in the page.
  function signOut(reason) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (reason) sessionStorage.setItem("molm3d.signout", reason);
    location.replace(location.pathname);
  }

  function enterApp() {
    $("#login").hidden = true;
    $("#nav").hidden = false;
    $("#session").hidden = false;
    if (!/^#\/(molecule|search|bulk)/.test(location.hash)) history.replaceState(null, "", "#/molecule");
    route(true);
  }

  // ---------------------------------------------------------------------------------------------
  // Routing: #/molecule[?smiles=...], #/search, #/bulk

  function parseHash() {
    const [page, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
    return { page: page || "molecule", params: new URLSearchParams(query) };
  }

  function route(focus = true) {
    if (!state.token && state.token !== "") return;
    if ($("#login").hidden === false) return;
    const { page, params } = parseHash();
    const known = ["molecule", "search", "bulk"].includes(page) ? page : "molecule";
    for (const name of ["molecule", "search", "bulk"]) $(`#page-${name}`).hidden = name !== known;
    for (const link of document.querySelectorAll("#nav a")) {
      if (link.dataset.page === known) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (known === "molecule") {
      const smiles = params.get("smiles");
      if (smiles && smiles !== state.shownKey) {
        $("#smiles").value = smiles;
        loadMolecule({ text: smiles, format: "smiles", id: params.get("id") || "" }, smiles);
      }
      if (state.viewer && !$("#molecule-result").hidden) state.viewer.resize();
    }
    if (focus && state.page !== known) $(`#${known}-title`).focus(); // a new page: start reading at its title
    state.page = known;
  }

  // ---------------------------------------------------------------------------------------------
  // Molecule page

  async function loadMolecule(molecule, key) {
    const error = $("#molecule-error");
    clearError(error);
    if (state.captionAbort) state.captionAbort.abort();
    state.shownKey = key;
    state.molecule = null;
    $("#molecule-form").setAttribute("aria-busy", "true");
    $("#molecule-result").setAttribute("aria-busy", "true");
    $("#caption").dataset.state = "waiting";
    let data;
    try {
      data = await api("/v1/molecule", { body: { molecule } });
    } catch (err) {
      if (state.shownKey !== key) return;
      $("#molecule-result").hidden = true;
      showError(error, err);
      $("#molecule-form").removeAttribute("aria-busy");
      return;
    }
    if (state.shownKey !== key) return; // another molecule was asked for meanwhile
    $("#molecule-form").removeAttribute("aria-busy");
    $("#molecule-result").removeAttribute("aria-busy");
    state.molecule = molecule;
    state.data = data;
    $("#molecule-result").hidden = false;
    $("#answers").replaceChildren();
    clearError($("#ask-error"));
    showConformer(data.conformer);
    showDepiction($("#depiction"), data.depiction_svg, data.conformer.smiles);
    showProperties(data);
    streamCaption(molecule);
  }

  // Conformer.method in words (molm3d_core/chem/conformers.py: input_3d, or the embedding then the force field).
  function describeMethod(method) {
    if (method === "input_3d") return "input 3D coordinates, kept as given (input_3d)";
    const [embed, field] = method.split("+");
    const embedding = {
      etkdg_v3: "ETKDG v3 from the SMILES graph",
      etkdg_v3_random_coords: "ETKDG v3 from random coordinates (fallback)",
    }[embed] || embed;
    const optimised = { mmff: "MMFF94", uff: "UFF (fallback)" }[field] || (field ? field : "not optimised");
    return `${embedding} + ${optimised} (${method})`;
  }

  function showConformer(conformer) {
    const note = $("#viewer-note");
    note.textContent = `${conformer.elements.length} heavy atoms, as the encoder read them (hydrogens removed)`;
    if (!state.viewer) {
      try {
        state.viewer = window.$3Dmol.createViewer($("#viewer"), { backgroundColor: "white" });
      } catch (err) {
        state.viewer = null;
      }
      if (!state.viewer) {
        note.textContent = "The 3D view needs WebGL, which this browser does not offer.";
        return;
      }
      window.addEventListener("resize", () => state.viewer.resize());
    }
    const viewer = state.viewer;
    viewer.resize(); // the container may have been hidden when the viewer last looked at its size
    viewer.removeAllModels();
    viewer.addModel(conformer.xyz, "xyz");
    viewer.setStyle({}, { stick: { radius: 0.14 }, sphere: { scale: 0.25 } });
    viewer.zoomTo();
    viewer.render();

    const facts = [
      ["method", describeMethod(conformer.method)],
      ["input", conformer.source_format || "smiles"],
      ["canonical SMILES", conformer.smiles],
      ["InChIKey", conformer.inchikey],
      ["record", conformer.record_id],
    ];
    const list = $("#provenance");
    list.replaceChildren();
    for (const [name, value] of facts) {
      if (!value) continue;
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = value;
      dd.dataset.fact = name;
      list.append(dt, dd);
    }
    const dt = document.createElement("dt");
    dt.textContent = "warnings";
    const dd = document.createElement("dd");
    dd.dataset.fact = "warnings";
    if (conformer.warnings.length) {
      const ul = document.createElement("ul");
      for (const warning of conformer.warnings) {
        const li = document.createElement("li");
        li.textContent = warning;
        ul.append(li);
      }
      dd.append(ul);
    } else {
      dd.textContent = "none";
    }
    list.append(dt, dd);
  }

  // An SVG from our server, shown as an image: its own styles never run in the page (CSP).
  function showDepiction(img, svg, smiles) {
    if (svg) {
      img.src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(svg)}`;
      img.alt = `2D depiction of ${smiles}`;
      img.hidden = false;
    } else {
      img.removeAttribute("src");
      img.alt = "";
      img.hidden = true;
    }
  }

  function headValue(name) {
    const data = state.data;
    if (!data || !data.properties_trained) return null;
    return (data.properties || []).find((p) => p.name === name) || null;
  }

  function formatValue(value, unit) {
    const number = Number(value);
    const text = Number.isInteger(number) ? String(number) : number.toFixed(Math.abs(number) >= 1000 ? 1 : 3);
    return unit ? `${text} ${unit}` : text;
  }

  function showProperties(data) {
    const box = $("#properties");
    box.replaceChildren();
    const properties = data.properties || [];
    if (!data.properties_trained || !properties.length) {
      const p = document.createElement("p");
      p.className = "muted";
      p.id = "properties-untrained";
      p.textContent = "not trained: this checkpoint's property heads were never trained, so it predicts no values.";
      box.append(p);
      return;
    }
    const table = document.createElement("table");
    table.id = "properties-table";
    const head = table.createTHead().insertRow();
    for (const title of ["property", "value", "unit"]) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = title;
      head.append(th);
    }
    const body = table.createTBody();
    for (const property of properties) {
      const row = body.insertRow();
      row.dataset.property = property.name;
      row.title = property.description || "";
      row.insertCell().textContent = property.name;
      row.insertCell().textContent = formatValue(property.value, "");
      row.insertCell().textContent = property.unit || "";
    }
    box.append(table);
  }

  // POST /v1/caption:stream: NDJSON lines, {"text": piece} ... then {"answer": Answer} (or {"error"}).
  async function streamCaption(molecule) {
    const out = $("#caption");
    const meta = $("#caption-meta");
    out.textContent = "";
    out.dataset.state = "streaming";
    out.dataset.chunks = "0";
    meta.textContent = "writing...";
    const abort = new AbortController();
    state.captionAbort = abort;
    let chunks = 0;
    try {
      const response = await api("/v1/caption:stream", { body: { molecule }, raw: true, signal: abort.signal });
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      const handle = (line) => {
        const message = JSON.parse(line);
        if (message.error) throw errorFrom(message.error, 200, null);
        if (message.text) {
          chunks += 1;
          out.textContent += message.text;
          out.dataset.chunks = String(chunks);
        }
        if (message.answer) {
          const answer = message.answer;
          out.textContent = answer.text || "";
          out.dataset.state = "done";
          meta.textContent = `${answer.num_tokens || 0} tokens, ${answer.finish_reason || "?"}, ` +
            `streamed in ${chunks} pieces`;
        }
      };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline).trim();
          buffer = buffer.slice(newline + 1);
          if (line) handle(line);
        }
      }
      if (buffer.trim()) handle(buffer.trim());
      if (out.dataset.state !== "done") throw new ApiError(0, "stream_cut", "the caption stream ended early");
    } catch (err) {
      if (err.name === "AbortError") return;
      out.dataset.state = "error";
      showError(meta, err);
    }
  }

  function headFor(question, key) {
    if (key) return key;
    const hit = HEAD_WORDS.find(([, pattern]) => pattern.test(question));
    return hit ? hit[0] : null;
  }

  async function ask(question, key) {
    const error = $("#ask-error");
    clearError(error);
    if (!state.molecule || !question.trim()) return;
    const molecule = state.molecule;
    const item = document.createElement("li");
    item.className = "answer";
    item.dataset.state = "asking";
    const q = document.createElement("p");
    q.className = "question";
    q.textContent = question;
    const text = document.createElement("p");
    text.className = "answer-text";
    text.textContent = "...";
    const parsed = document.createElement("p");
    parsed.className = "parsed";
    item.append(q, text, parsed);
    $("#answers").prepend(item);
    try {
      const answer = await api("/v1/ask", { body: { molecule, question } });
      if (state.molecule !== molecule) return;
      text.textContent = answer.text || "";
      item.dataset.state = "done";
      item.dataset.hasValue = answer.has_value ? "true" : "false";
      const value = document.createElement("span");
      value.className = "value";
      if (answer.has_value) {
        item.dataset.value = String(answer.value);
        item.dataset.unit = answer.unit || "";
        value.textContent = `parsed value: ${formatValue(answer.value, answer.unit)}`;
        if (!answer.unit) value.textContent += " (no unit in the answer)";
      } else {
        value.textContent = "no number in the answer";
      }
      parsed.append(value);
      const head = headFor(question, key);
      if (head && head !== "classes") {
        const property = headValue(head);
        const span = document.createElement("span");
        span.className = "head";
        span.dataset.head = head;
        span.textContent = property
          ? `property head ${head}: ${formatValue(property.value, property.unit)}`
          : `property head ${head}: not trained`;
        parsed.append(span);
      }
    } catch (err) {
      item.dataset.state = "error";
      text.textContent = "";
      showError(text, err);
    }
  }

  async function readMoleculeFile(file) {
    const extension = (file.name.split(".").pop() || "").toLowerCase();
    const format = FILE_FORMATS[extension];
    const error = $("#molecule-error");
    if (!format) {
      showError(error, new ApiError(0, "unsupported_format", `${file.name}: use .sdf, .mol, .xyz or .pdb`));
      return;
    }
    let text = await file.text();
    if (format === "sdf") {
      const records = text.split(/^\$\$\$\$[^\S\n]*\r?\n?/m).filter((r) => r.trim());
      if (records.length > 1) text = `${records[0]}$$$$\n`; // the page shows one molecule: the first
    }
    if (format === "smiles") text = (text.split(/\r?\n/).find((l) => l.trim()) || "").trim().split(/\s+/)[0];
    history.replaceState(null, "", "#/molecule");
    $("#smiles").value = "";
    loadMolecule({ text, format, id: file.name }, `file:${file.name}:${file.size}:${file.lastModified}`);
  }

  // ---------------------------------------------------------------------------------------------
  // Search page

  async function search(mode, query, k) {
    const error = $("#search-error");
    const list = $("#search-results");
    clearError(error);
    list.replaceChildren();
    $("#search-meta").textContent = "searching...";
    const body = mode === "text" ? { text: query, k } : { molecule: { text: query, format: "smiles" }, k };
    let result;
    try {
      result = await api("/v1/retrieve", { body });
    } catch (err) {
      $("#search-meta").textContent = "";
      showError(error, err);
      return;
    }
    const hits = result.hits || [];
    $("#search-meta").textContent =
      `${hits.length} hits, best first (cosine similarity)` + (result.index_version ? `, index ${result.index_version}` : "");
    const images = [];
    hits.forEach((hit, rank) => {
      const fields = hit.fields || {};
      const item = document.createElement("li");
      item.className = "hit";
      item.dataset.score = String(hit.score || 0);
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = (hit.score || 0).toFixed(4);
      score.title = "score";
      const main = document.createElement(fields.smiles ? "a" : "div");
      main.className = "hit-main";
      if (fields.smiles) {
        main.href = `#/molecule?smiles=${encodeURIComponent(fields.smiles)}&id=${encodeURIComponent(hit.id || "")}`;
        main.setAttribute("aria-label", `rank ${rank + 1}: open ${fields.name || fields.smiles}`);
      }
      if (mode === "text" && fields.smiles) {
        const img = document.createElement("img");
        img.className = "thumb";
        img.alt = "";
        images.push([img, fields.smiles]);
        main.append(img);
      }
      const words = document.createElement("div");
      const title = document.createElement("strong");
      title.textContent = fields.name || hit.id || "";
      words.append(title);
      for (const name of mode === "text" ? ["smiles"] : ["text"]) {
        if (!fields[name]) continue;
        const p = document.createElement("p");
        p.className = name === "smiles" ? "mono" : "";
        p.textContent = fields[name];
        words.append(p);
      }
      main.append(words);
      item.append(score, main);
      list.append(item);
    });
    if (images.length) depictAll(images);
  }

  // 2D depictions of the hits: one POST /v1/depict per 100 SMILES.
  async function depictAll(images) {
    for (let start = 0; start < images.length; start += 100) {
      const batch = images.slice(start, start + 100);
      try {
        const { svgs } = await api("/v1/depict", { body: { smiles: batch.map(([, s]) => s), width: 160, height: 120 } });
        batch.forEach(([img, smiles], i) => showDepiction(img, svgs[i], smiles));
      } catch (err) {
        showError($("#search-error"), err);
        return;
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Bulk page

  async function submitJob(file, task, question, maxNewTokens) {
    const error = $("#bulk-error");
    clearError(error);
    if (!file) {
      showError(error, new ApiError(0, "invalid_request", "choose a file first"));
      return;
    }
    const button = $("#bulk-form button[type=submit]");
    button.disabled = true;
    try {
      const text = await file.text();
      const body = { filename: file.name, text, task };
      if (task === "ask") body.question = question;
      if (maxNewTokens && task !== "embed") body.decoding = { max_new_tokens: maxNewTokens };
      const job = await api("/v1/bulk/jobs", { body });
      followJob(job.job_id, job.total);
    } catch (err) {
      showError(error, err);
    } finally {
      button.disabled = false;
    }
  }

  function followJob(id, total) {
    if (state.job && state.job.timer) clearTimeout(state.job.timer);
    for (const url of state.downloads) URL.revokeObjectURL(url);
    state.downloads = [];
    state.job = { id, timer: null, complete: false, misses: 0 };
    $("#bulk-job").hidden = false;
    $("#bulk-job-id").textContent = id;
    $("#bulk-downloads").replaceChildren();
    $("#bulk-failures tbody").replaceChildren();
    for (const button of document.querySelectorAll(".downloads button")) button.disabled = true;
    showProgress({ total, done: 0, failed: 0, complete: false, failures: [] });
    pollJob(state.job);
  }

  async function pollJob(job) {
    if (state.job !== job) return;
    try {
      const status = await api(`/v1/bulk/jobs/${encodeURIComponent(job.id)}`, { method: "GET" });
      if (state.job !== job) return;
      clearError($("#bulk-error"));
      showProgress(status);
      job.complete = status.complete;
    } catch (err) {
      if (state.job !== job) return;
      // Just after the upload its records may not be readable yet: a few 404s are expected.
      if (!(err.status === 404 && ++job.misses < 10)) showError($("#bulk-error"), err);
    }
    if (!job.complete && state.token !== null) job.timer = setTimeout(() => pollJob(job), POLL_MS);
  }

  function showProgress(status) {
    const total = status.total || 0;
    const finished = (status.done || 0) + (status.failed || 0);
    const percent = total ? Math.floor((100 * finished) / total) : 0;
    const bar = $("#bulk-progress");
    bar.value = percent;
    bar.textContent = `${percent} %`;
    const line = $("#bulk-status");
    line.textContent = `${percent} %: ${status.done || 0} done, ${status.failed || 0} failed, ` +
      `${Math.max(0, total - finished)} pending of ${total}` + (status.complete ? " (complete)" : "");
    line.dataset.percent = String(percent);
    line.dataset.complete = status.complete ? "true" : "false";
    const body = $("#bulk-failures tbody");
    body.replaceChildren();
    for (const failure of status.failures || []) {
      const row = body.insertRow();
      row.className = "failure";
      row.insertCell().textContent = String(failure.index);
      row.insertCell().textContent = failure.record_id || "";
      const code = document.createElement("code");
      code.textContent = failure.code || "";
      row.insertCell().append(code);
      const reason = row.insertCell();
      reason.className = (failure.message || "").includes("\n") ? "reason mono" : "reason"; // RDKit's caret lines
      reason.textContent = failure.message || "";
    }
    $("#bulk-no-failures").hidden = (status.failures || []).length > 0;
    for (const button of document.querySelectorAll(".downloads button")) button.disabled = !status.complete;
  }

  // The results file, fetched with the token, offered as a download from a blob URL.
  async function download(format) {
    const job = state.job;
    if (!job) return;
    const error = $("#bulk-error");
    clearError(error);
    try {
      const response = await api(`/v1/bulk/jobs/${encodeURIComponent(job.id)}/results?format=${format}`, {
        method: "GET", raw: true,
      });
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      state.downloads.push(url);
      const link = document.createElement("a");
      link.href = url;
      link.download = `${job.id}.${format}`;
      link.textContent = `${job.id}.${format} (${blob.size} bytes)`;
      link.dataset.format = format;
      const item = document.createElement("li");
      item.append(link);
      $("#bulk-downloads").append(item);
      link.click();
    } catch (err) {
      showError(error, err);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Wiring

  function start() {
    $("#login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      signIn($("#token").value.trim());
    });
    $("#logout").addEventListener("click", () => signOut(null));
    window.addEventListener("hashchange", () => route(true));

    $("#molecule-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const smiles = $("#smiles").value.trim();
      if (!smiles) {
        showError($("#molecule-error"), new ApiError(0, "empty_input", "enter a SMILES or choose a file"));
        return;
      }
      const target = `#/molecule?smiles=${encodeURIComponent(smiles)}`;
      if (location.hash === target) loadMolecule({ text: smiles, format: "smiles" }, smiles);
      else location.hash = target;
    });
    $("#molecule-file").addEventListener("change", (event) => {
      const file = event.target.files[0];
      if (file) readMoleculeFile(file);
    });
    const drop = $("#drop");
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      const file = event.dataTransfer.files[0];
      if (file) readMoleculeFile(file);
    });

    const suggestions = $("#suggestions");
    for (const [key, label, question] of SUGGESTIONS) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary";
      button.textContent = label;
      button.title = question;
      button.dataset.key = key;
      button.addEventListener("click", () => {
        $("#question").value = question;
        ask(question, key);
      });
      suggestions.append(button);
    }
    $("#ask-form").addEventListener("submit", (event) => {
      event.preventDefault();
      ask($("#question").value.trim(), null);
    });

    const modeLabel = () => {
      const mode = $("input[name=mode]:checked").value;
      $("#search-query-label").textContent = mode === "text" ? "Text" : "SMILES";
      $("#search-query").placeholder = mode === "text" ? "a non-steroidal anti-inflammatory drug" : "CCO";
    };
    for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", modeLabel);
    modeLabel();
    $("#search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const query = $("#search-query").value.trim();
      if (!query) {
        showError($("#search-error"), new ApiError(0, "empty_input", "enter a query"));
        return;
      }
      const k = Math.min(100, Math.max(1, Number($("#search-k").value) || 10));
      search($("input[name=mode]:checked").value, query, k);
    });

    $("#bulk-task").addEventListener("change", () => {
      $("#bulk-question").disabled = $("#bulk-task").value !== "ask";
      $("#bulk-max-tokens").disabled = $("#bulk-task").value === "embed";
    });
    $("#bulk-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const maxNewTokens = Number($("#bulk-max-tokens").value) || 0;
      submitJob($("#bulk-file").files[0], $("#bulk-task").value, $("#bulk-question").value.trim(), maxNewTokens);
    });
    for (const button of document.querySelectorAll(".downloads button")) {
      button.addEventListener("click", () => download(button.dataset.format));
    }

    const reason = sessionStorage.getItem("molm3d.signout");
    sessionStorage.removeItem("molm3d.signout");
    if (reason) showError($("#login-error"), new ApiError(401, "unauthenticated", reason));
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token !== null) signIn(token, { quiet: true });
    else $("#token").focus();
  }

  // For the browser tests and the curious: the 3Dmol viewer and what the page shows.
  window.molm3dConsole = {
    get viewer() { return state.viewer; },
    get molecule() { return state.data; },
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

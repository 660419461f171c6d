// tinyserve playground: plain JavaScript, no libraries. Every answer comes from the server's public routes;
// the page only draws. The API token lives in this closure alone (never in storage, never in a URL).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const API = new URL("../", document.baseURI); // the service root, wherever /ui/ is mounted
  let token = "";

  // ---- talking to the server ----------------------------------------------------------------------
  class ServerError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function call(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (token) headers.set("Authorization", `Bearer ${token}`);
    let response;
    try {
      response = await fetch(new URL(path, API), { ...options, headers });
    } catch (e) {
      throw new ServerError(0, `cannot reach the server (${e.message})`);
    }
    if (response.ok) return response;
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") message = body.error; // the server's own words
    } catch (_) { /* not JSON: keep the status line */ }
    throw new ServerError(response.status, message);
  }

  const postJSON = async (path, body) =>
    (await call(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })).json();

  function showError(element, error) {
    if (!error) {
      element.hidden = true;
      element.textContent = "";
      return;
    }
    const prefix = error.status ? `${error.status}: ` : "";
    const hint = error.status === 401 ? " (enter the API token at the top of the page)" : "";
    element.textContent = prefix + error.message + hint;
    element.hidden = false;
  }

  // ---- tabs (WAI-ARIA tabs pattern: arrow keys move between tabs) ----------------------------------
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const shown = new Set();
  function select(tab, focus = true) {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !on;
    }
    if (focus) tab.focus();
    const view = tab.id.replace("tab-", "");
    history.replaceState(null, "", `#${view}`);
    if (!shown.has(view)) {
      shown.add(view);
      onFirstShow[view]?.();
    }
  }
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (e) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
      if (step) select(tabs[(i + step + tabs.length) % tabs.length]);
      if (e.key === "Home") select(tabs[0]);
      if (e.key === "End") select(tabs[tabs.length - 1]);
    });
  });

  // ---- readiness and token -------------------------------------------------------------------------
  async function checkReady() {
    const chip = $("readiness");
    try {
      await call("readyz");
      chip.textContent = "server ready";
      chip.className = "chip ready";
    } catch (e) {
      chip.textContent = e.status ? `not ready (${e.status})` : "server unreachable";
      chip.className = "chip down";
    }
  }
  $("token").addEventListener("change", (e) => {
    token = e.target.value.trim();
    // everything shown so far may have been refused: ask again with the token
    shown.clear();
    const current = tabs.find((t) => t.getAttribute("aria-selected") === "true");
    select(current, false);
    if (!padEmpty) predictDrawing();
  });

  // ---- LeNet: drawing pad, upload, answer ------------------------------------------------------------
  const pad = $("pad");
  const ink = pad.getContext("2d");
  let padEmpty = true;
  let inFlight = false;
  let again = false;

  function clearPad() {
    ink.fillStyle = "#fff";
    ink.fillRect(0, 0, pad.width, pad.height);
    padEmpty = true;
  }

  function showAnswer(result) {
    const p = result.probabilities;
    $("digit").textContent = String(result.label);
    $("digit").dataset.label = String(result.label);
    $("confidence").textContent = `${(100 * p[result.label]).toFixed(1)}% sure (model ${result.model} v${result.version})`;
    const bars = $("bars");
    p.forEach((value, digit) => {
      const row = bars.children[digit];
      row.classList.toggle("best", digit === result.label);
      row.querySelector(".fill").style.width = `${(100 * value).toFixed(2)}%`;
      row.querySelector(".pct").textContent = `${(100 * value).toFixed(1)}%`;
      row.querySelector(".track").setAttribute("aria-valuenow", (100 * value).toFixed(1));
    });
    if (result.input) drawInput(result.input);
  }

  function resetAnswer(message) {
    $("digit").textContent = "–";
    delete $("digit").dataset.label;
    $("confidence").textContent = message;
    for (const row of $("bars").children) {
      row.classList.remove("best");
      row.querySelector(".fill").style.width = "0";
      row.querySelector(".pct").textContent = "";
      row.querySelector(".track").setAttribute("aria-valuenow", "0");
    }
    const seen = $("seen").getContext("2d");
    seen.fillStyle = "#000";
    seen.fillRect(0, 0, 32, 32);
  }

  function drawInput(rows) {
    const seen = $("seen").getContext("2d");
    const image = seen.createImageData(32, 32);
    rows.forEach((row, y) =>
      row.forEach((v, x) => {
        const i = 4 * (32 * y + x);
        const level = Math.round(255 * v); // ink high: white on black, as LeNet sees it
        image.data.set([level, level, level, 255], i);
      }),
    );
    seen.putImageData(image, 0, 0);
  }

  async function classify(blob) {
    const form = new FormData();
    form.append("image", blob, "digit.png");
    const response = await call("v1/lenet/predict-image?input=true", { method: "POST", body: form });
    return response.json();
  }

  // One request at a time while drawing; the newest drawing is sent as soon as the last answer is in.
  async function predictDrawing() {
    if (inFlight) {
      again = true;
      return;
    }
    inFlight = true;
    pad.dataset.state = "busy"; // for people and tests alike: an answer is on its way
    try {
      const blob = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
      const result = await classify(blob);
      if (!padEmpty) showAnswer(result);
      showError($("lenet-error"), null);
    } catch (e) {
      showError($("lenet-error"), e);
    } finally {
      inFlight = false;
      if (again) {
        again = false;
        if (!padEmpty) predictDrawing();
      }
      if (!inFlight) pad.dataset.state = "idle";
    }
  }

  let last = null;
  function point(e) {
    const box = pad.getBoundingClientRect();
    return [((e.clientX - box.left) * pad.width) / box.width, ((e.clientY - box.top) * pad.height) / box.height];
  }
  function strokeTo(e) {
    const [x, y] = point(e);
    ink.lineWidth = Number($("pen").value);
    ink.lineCap = "round";
    ink.lineJoin = "round";
    ink.strokeStyle = "#111";
    ink.beginPath();
    ink.moveTo(...(last || [x, y]));
    ink.lineTo(x, y);
    ink.stroke();
    last = [x, y];
  }
  pad.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    pad.setPointerCapture(e.pointerId);
    $("upload-preview").hidden = true;
    padEmpty = false;
    last = null;
    strokeTo(e);
    e.preventDefault();
  });
  pad.addEventListener("pointermove", (e) => {
    if (last === null) return;
    for (const c of e.getCoalescedEvents ? e.getCoalescedEvents() : [e]) strokeTo(c);
    predictDrawing();
  });
  const lift = () => {
    if (last === null) return;
    last = null;
    predictDrawing();
  };
  pad.addEventListener("pointerup", lift);
  pad.addEventListener("pointercancel", lift);

  $("clear").addEventListener("click", () => {
    clearPad();
    again = false;
    $("upload-preview").hidden = true;
    showError($("lenet-error"), null);
    resetAnswer("Draw a digit to see the answer.");
  });
  document.addEventListener("keydown", (e) => {
    const typing = e.target instanceof HTMLInputElement;
    if (!typing && (e.key === "c" || e.key === "Escape") && !$("view-lenet").hidden) $("clear").click();
  });

  async function classifyFile(file) {
    if (!file) return;
    clearPad();
    resetAnswer(`Reading ${file.name}…`);
    const preview = $("upload-preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    preview.alt = `the uploaded file ${file.name}`;
    preview.hidden = false;
    try {
      showAnswer(await classify(file));
      showError($("lenet-error"), null);
    } catch (e) {
      resetAnswer(`${file.name} was refused.`);
      showError($("lenet-error"), e);
    }
  }
  const drop = $("drop");
  $("file").addEventListener("change", (e) => {
    classifyFile(e.target.files[0]);
    e.target.value = "";
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      $("file").click();
    }
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    classifyFile(e.dataTransfer.files[0]);
  });

  function buildBars() {
    const bars = $("bars");
    for (let digit = 0; digit < 10; digit++) {
      const row = document.createElement("li");
      row.innerHTML =
        `<span class="digit">${digit}</span>` +
        `<span class="track" role="meter" aria-label="probability of ${digit}" aria-valuemin="0" aria-valuemax="100" aria-valuenow="0">` +
        `<span class="fill"></span></span><span class="pct"></span>`;
      bars.append(row);
    }
  }

  // ---- Blobs: heat map from one request, centres, exact answers --------------------------------------
  const plane = $("plane");
  const RANGE = 2.5; // the plane shows [-RANGE, RANGE] on both axes
  const GRID = 64; // 64 x 64 = 4096 points: the most one /v1/blobs/predict request takes
  let heat = null;
  let centres = [];
  let cursor = [-1, 1];

  const toPixel = ([x, y]) => [((x + RANGE) / (2 * RANGE)) * plane.width, ((RANGE - y) / (2 * RANGE)) * plane.height];
  const toPoint = ([px, py]) => [(px / plane.width) * 2 * RANGE - RANGE, RANGE - (py / plane.height) * 2 * RANGE];
  const round3 = (v) => Math.round(v * 1000) / 1000;

  function colour(p) {
    // blue (0) -> white (0.5) -> red (1), as in the training picture
    const lerp = (a, b, t) => Math.round(a + (b - a) * t);
    const [lo, mid, hi] = [[33, 102, 172], [247, 247, 247], [178, 24, 43]];
    const [from, to, t] = p < 0.5 ? [lo, mid, p / 0.5] : [mid, hi, (p - 0.5) / 0.5];
    return from.map((c, i) => lerp(c, to[i], t));
  }

  async function loadHeat() {
    const rows = [];
    for (let j = 0; j < GRID; j++) {
      for (let i = 0; i < GRID; i++) {
        const x = -RANGE + ((i + 0.5) * 2 * RANGE) / GRID;
        const y = RANGE - ((j + 0.5) * 2 * RANGE) / GRID;
        rows.push([round3(x), round3(y)]);
      }
    }
    try {
      const [answer, info] = await Promise.all([
        postJSON("v1/blobs/predict", { x: rows }),
        call("v1/models/blobs").then((r) => r.json()),
      ]);
      heat = new ImageData(GRID, GRID);
      answer.probabilities.forEach((p, k) => heat.data.set([...colour(p), 255], 4 * k));
      const labels = info.card.data.center_labels || [];
      centres = (info.card.data.centers || []).map((c, k) => ({ at: c, label: labels[k] }));
      $("grid-info").textContent = `${rows.length} points, one request to /v1/blobs/predict (model ${answer.model} v${answer.version}).`;
      showError($("blobs-error"), null);
    } catch (e) {
      showError($("blobs-error"), e);
    }
    drawPlane();
  }

  function drawPlane() {
    const g = plane.getContext("2d");
    g.fillStyle = "#eef1f6";
    g.fillRect(0, 0, plane.width, plane.height);
    if (heat) {
      const small = document.createElement("canvas");
      small.width = small.height = GRID;
      small.getContext("2d").putImageData(heat, 0, 0);
      g.imageSmoothingEnabled = true;
      g.drawImage(small, 0, 0, plane.width, plane.height);
    }
    g.strokeStyle = "rgba(40, 50, 70, 0.35)";
    g.lineWidth = 1;
    g.font = "12px system-ui, sans-serif";
    g.fillStyle = "rgba(30, 40, 60, 0.75)";
    for (let v = -2; v <= 2; v++) {
      const [px, py] = toPixel([v, v]);
      g.beginPath();
      g.moveTo(px, 0);
      g.lineTo(px, plane.height);
      g.moveTo(0, py);
      g.lineTo(plane.width, py);
      g.stroke();
      if (v !== 0) {
        g.fillText(String(v), px + 3, toPixel([0, 0])[1] - 4);
        g.fillText(String(v), toPixel([0, 0])[0] + 4, py - 3);
      }
    }
    centres.forEach(({ at, label }) => {
      const [px, py] = toPixel(at);
      g.beginPath();
      g.arc(px, py, 9, 0, 2 * Math.PI);
      g.lineWidth = 3;
      g.strokeStyle = "#fff";
      g.stroke();
      g.lineWidth = 1.5;
      g.strokeStyle = "#1b2330";
      g.stroke();
      g.fillStyle = "#1b2330";
      g.fillText(label === undefined ? "centre" : `centre, label ${label}`, px + 12, py + 4);
    });
    const [cx, cy] = toPixel(cursor);
    g.strokeStyle = "#111";
    g.lineWidth = 2;
    g.beginPath();
    g.moveTo(cx - 10, cy);
    g.lineTo(cx + 10, cy);
    g.moveTo(cx, cy - 10);
    g.lineTo(cx, cy + 10);
    g.stroke();
  }

  async function askPoint(x, y) {
    cursor = [round3(x), round3(y)];
    $("px").value = cursor[0];
    $("py").value = cursor[1];
    drawPlane();
    try {
      const answer = await postJSON("v1/blobs/predict", { x: [cursor] });
      const p = answer.probabilities[0];
      $("point").textContent = `(${cursor[0]}, ${cursor[1]})`;
      $("point").dataset.x = String(cursor[0]);
      $("point").dataset.y = String(cursor[1]);
      $("probability").textContent = String(p); // exactly what the server answered
      $("label").textContent = String(answer.labels[0]);
      showError($("blobs-error"), null);
    } catch (e) {
      $("probability").textContent = "–";
      $("label").textContent = "–";
      showError($("blobs-error"), e);
    }
  }

  plane.addEventListener("click", (e) => {
    const box = plane.getBoundingClientRect();
    askPoint(...toPoint([((e.clientX - box.left) * plane.width) / box.width, ((e.clientY - box.top) * plane.height) / box.height]));
  });
  plane.addEventListener("keydown", (e) => {
    const step = e.shiftKey ? 0.5 : 0.1;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
    if (moves[e.key]) {
      e.preventDefault();
      cursor = cursor.map((v, i) => round3(Math.max(-RANGE, Math.min(RANGE, v + moves[e.key][i]))));
      drawPlane();
    } else if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      askPoint(...cursor);
    }
  });
  $("point-form").addEventListener("submit", (e) => {
    e.preventDefault();
    askPoint(Number($("px").value), Number($("py").value));
  });

  // ---- Linear and multilinear -------------------------------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attributes, parent) {
    const element = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attributes)) element.setAttribute(k, v);
    parent.append(element);
    return element;
  }

  async function drawLine() {
    const chart = $("line-chart");
    const from = Number($("lfrom").value);
    const to = Number($("lto").value);
    const xs = Array.from({ length: 101 }, (_, i) => from + ((to - from) * i) / 100);
    try {
      if (!(to > from)) throw new ServerError(0, `x from (${from}) must be less than to (${to})`);
      const { y } = await postJSON("v1/linear/predict", { x: xs });
      const [w, h, m, left] = [520, 300, 36, 70]; // room for the y labels on the left
      const lo = Math.min(...y);
      const hi = Math.max(...y);
      const sx = (x) => left + ((x - from) / (to - from)) * (w - left - m);
      const sy = (v) => h - m - ((v - lo) / (hi - lo || 1)) * (h - 2 * m);
      for (const node of [...chart.children]) if (node.tagName !== "title") node.remove();
      for (let k = 0; k <= 4; k++) {
        const gx = from + ((to - from) * k) / 4;
        const gy = lo + ((hi - lo) * k) / 4;
        svg("line", { x1: sx(gx), x2: sx(gx), y1: m, y2: h - m, class: "grid-line" }, chart);
        svg("line", { x1: left, x2: w - m, y1: sy(gy), y2: sy(gy), class: "grid-line" }, chart);
        svg("text", { x: sx(gx), y: h - m + 16, "text-anchor": "middle" }, chart).textContent = String(round3(gx));
        svg("text", { x: left - 6, y: sy(gy) + 4, "text-anchor": "end" }, chart).textContent = (Math.round(gy * 100) / 100).toString();
      }
      svg("line", { x1: left, x2: w - m, y1: h - m, y2: h - m, class: "axis" }, chart);
      svg("line", { x1: left, x2: left, y1: m, y2: h - m, class: "axis" }, chart);
      svg("polyline", { points: xs.map((x, i) => `${sx(x)},${sy(y[i])}`).join(" "), class: "fit" }, chart);
      svg("text", { x: w - m, y: h - 8, "text-anchor": "end" }, chart).textContent = "x";
      svg("text", { x: left - 6, y: m - 12, "text-anchor": "end" }, chart).textContent = "y";
      const slope = (y[100] - y[0]) / (to - from);
      $("line-fit").textContent = `From ${xs.length} points: y ≈ ${(y[0] - slope * from).toFixed(3)} + ${slope.toFixed(3)}·x (the data was 5 + 7x + noise).`;
      const x = Number($("lx").value);
      if (x >= from && x <= to) {
        const [answer] = (await postJSON("v1/linear/predict", { x: [x] })).y;
        svg("circle", { cx: sx(x), cy: sy(answer), r: 6, class: "mark" }, chart);
      }
      showError($("linear-error"), null);
    } catch (e) {
      showError($("linear-error"), e);
    }
  }

  async function predictLinear() {
    try {
      const { y } = await postJSON("v1/linear/predict", { x: [Number($("lx").value)] });
      $("ly").textContent = String(y[0]);
      showError($("linear-error"), null);
      await drawLine();
    } catch (e) {
      $("ly").textContent = "–";
      showError($("linear-error"), e);
    }
  }

  async function predictMulti() {
    try {
      const row = ["m1", "m2", "m3"].map((id) => Number($(id).value));
      const { y } = await postJSON("v1/multilinear/predict", { x: [row] });
      $("my").textContent = String(y[0]);
      showError($("multi-error"), null);
    } catch (e) {
      $("my").textContent = "–";
      showError($("multi-error"), e);
    }
  }

  $("linear-form").addEventListener("submit", (e) => {
    e.preventDefault();
    predictLinear();
  });
  $("range-form").addEventListener("submit", (e) => {
    e.preventDefault();
    drawLine();
  });
  $("multi-form").addEventListener("submit", (e) => {
    e.preventDefault();
    predictMulti();
  });

  // ---- Models: every card, provider, readiness, training pictures --------------------------------------
  const text = (tag, content, attributes = {}) => {
    const element = document.createElement(tag);
    element.textContent = content;
    for (const [k, v] of Object.entries(attributes)) element.setAttribute(k, v);
    return element;
  };
  const show = (v) => (typeof v === "object" && v !== null ? JSON.stringify(v) : String(v));

  function table(caption, entries) {
    const section = document.createDocumentFragment();
    section.append(text("h3", caption));
    const t = document.createElement("table");
    for (const [k, v] of entries) {
      const row = t.insertRow();
      row.append(text("th", k, { scope: "row" }), text("td", show(v)));
    }
    section.append(t);
    return section;
  }

  async function picture(name, file, figure) {
    try {
      const blob = await (await call(`v1/models/${encodeURIComponent(name)}/pictures/${encodeURIComponent(file)}`)).blob();
      const image = document.createElement("img");
      image.src = URL.createObjectURL(blob); // fetched with the token; shown from memory
      image.alt = `${name}: ${file.replace(/\.png$/, "").replace(/_/g, " ")}`;
      figure.prepend(image);
    } catch (e) {
      figure.append(text("p", `${file}: ${e.message}`, { class: "error" }));
    }
  }

  async function loadModels() {
    const cards = $("cards");
    try {
      const { models } = await (await call("v1/models")).json();
      cards.replaceChildren();
      for (const info of models) {
        const card = info.card;
        const article = document.createElement("article");
        article.className = "panel card";
        article.dataset.model = info.name;
        article.setAttribute("aria-labelledby", `card-${info.name}`);
        const header = document.createElement("header");
        header.append(
          text("h2", info.name, { id: `card-${info.name}` }),
          text("span", `v${info.version}`, { class: "badge" }),
          text("span", info.ready ? "ready" : "not ready", { class: `badge ${info.ready ? "ready" : "down"}` }),
          text("span", info.provider, { class: "badge provider" }),
        );
        article.append(header, text("p", card.description, { class: "description" }));
        const tensors = (list) => list.map((t) => `${t.name} ${t.dtype} [${t.shape.join(", ")}]`).join("; ");
        article.append(
          table("Model", [
            ["task", card.task],
            ["inputs", tensors(card.inputs)],
            ["outputs", tensors(card.outputs)],
            ...(card.labels ? [["labels", card.labels.join(" ")]] : []),
            ["versions", info.versions.join(", ")],
            ["sha256", card.sha256],
            ["opset", card.opset],
            ["producer", `${card.producer.name} ${card.producer.version}, onnx ${card.producer.onnx}`],
            ["seed", card.seed],
          ]),
          table("Metrics", Object.entries(card.metrics)),
          table("Recipe", Object.entries(card.recipe)),
          table("Data", Object.entries(card.data)),
          table("Preprocessing", Object.entries(card.preprocessing)),
        );
        if (info.pictures && info.pictures.length) {
          article.append(text("h3", "Training pictures"));
          for (const file of info.pictures) {
            const figure = document.createElement("figure");
            figure.append(text("figcaption", file));
            article.append(figure);
            picture(info.name, file, figure);
          }
        }
        cards.append(article);
      }
      showError($("models-error"), null);
    } catch (e) {
      showError($("models-error"), e);
    }
  }

  const onFirstShow = {
    lenet: () => {},
    blobs: () => {
      drawPlane();
      loadHeat();
    },
    linear: () => {
      predictLinear();
      predictMulti();
    },
    models: loadModels,
  };

  // ---- start -----------------------------------------------------------------------------------------
  buildBars();
  clearPad();
  resetAnswer("Draw a digit to see the answer.");
  checkReady();
  const first = tabs.find((t) => `#${t.id.replace("tab-", "")}` === location.hash) || tabs[0];
  select(first, false);
})();

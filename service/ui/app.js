// tinyserve playground: plain JavaScript, no libraries. Every answer comes from the server's public routes;
// the page only draws. The API token lives in this closure alone (never in storage, never in a URL).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const API = new URL("../", document.baseURI); // the service root, wherever /ui/ is mounted
  const POLL_MS = 3000; // how often the status chip asks the server how it is
  let token = "";

  // ---- numbers as people read them (the exact value stays in data-value) -----------------------------
  const number = new Intl.NumberFormat("en", { maximumFractionDigits: 4 });
  const scientific = new Intl.NumberFormat("en", { notation: "scientific", maximumSignificantDigits: 5 });
  const fmt = (v) => (v !== 0 && (Math.abs(v) >= 1e6 || Math.abs(v) < 1e-3) ? scientific : number).format(v);
  // 99.96% is not certainty: the ends are shown as bounds, never as 100.0% or 0.0%
  function percent(p) {
    if (p >= 0.9995) return "> 99.9%";
    if (p < 0.0005) return "< 0.1%";
    return `${(100 * p).toFixed(1)}%`;
  }

  // ---- talking to the server ----------------------------------------------------------------------
  class ServerError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function refusal(status, statusText, read) {
    let message = `${status} ${statusText}`;
    try {
      const body = JSON.parse(await read());
      if (body && typeof body.error === "string") message = body.error; // the server's own words
    } catch (_) { /* not JSON: keep the status line */ }
    return new ServerError(status, message);
  }

  async function call(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (token) headers.set("Authorization", `Bearer ${token}`);
    let response;
    try {
      response = await fetch(new URL(path, API), { ...options, headers });
    } catch (e) {
      chip.heard(0);
      throw new ServerError(0, `cannot reach the server (${e.message})`);
    }
    chip.heard(response.status);
    if (response.ok) return response;
    throw await refusal(response.status, response.statusText, () => response.text());
  }

  const postJSON = async (path, body) =>
    (await call(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })).json();

  // An upload through XMLHttpRequest, whose upload events give a progress bar (fetch has none).
  function upload(path, form, progress) {
    return new Promise((resolve, reject) => {
      const request = new XMLHttpRequest();
      request.open("POST", new URL(path, API));
      if (token) request.setRequestHeader("Authorization", `Bearer ${token}`);
      request.upload.addEventListener("progress", (e) => progress(e.lengthComputable ? e.loaded / e.total : null));
      request.upload.addEventListener("load", () => progress(1));
      request.addEventListener("error", () => {
        chip.heard(0);
        reject(new ServerError(0, "cannot reach the server"));
      });
      request.addEventListener("load", async () => {
        chip.heard(request.status);
        if (request.status >= 200 && request.status < 300) resolve(JSON.parse(request.responseText));
        else reject(await refusal(request.status, request.statusText, async () => request.responseText));
      });
      request.send(form);
    });
  }

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

  // ---- the status chip: what the server says now, from polling and from every answer -------------------
  const chip = (() => {
    const element = $("readiness");
    let ready = null; // the last /readyz verdict
    function set(state, text) {
      if (element.dataset.state === state && element.textContent === text) return; // speak on changes only
      element.dataset.state = state;
      element.textContent = text;
    }
    return {
      heard(status) {
        if (status === 0) set("down", "unreachable");
        else if (status === 401) set("token", token ? "token refused (401)" : "needs the API token (401)");
        else if (status === 503 && ready === false) set("down", "not ready (503)");
        else if (status < 500 && ready) set("ready", "ready");
      },
      async poll() {
        try {
          const probe = await fetch(new URL("readyz", API), { cache: "no-store" });
          ready = probe.ok;
          if (!probe.ok) {
            set("down", `not ready (${probe.status})`);
            return;
          }
          await call("v2"); // a route behind the token, if there is one: answers 401 without it
        } catch (e) {
          if (e instanceof ServerError) return; // call() has set the chip
          set("down", "unreachable");
        }
      },
    };
  })();
  async function pollForever() {
    if (!document.hidden) await chip.poll();
    setTimeout(pollForever, POLL_MS);
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

  $("token").addEventListener("change", (e) => {
    token = e.target.value.trim();
    // everything shown so far may have been refused: ask again with the token
    shown.clear();
    const current = tabs.find((t) => t.getAttribute("aria-selected") === "true");
    select(current, false);
    chip.poll();
    if (!padEmpty) predictDrawing(true);
  });

  // ---- LeNet: drawing pad, typed digit, upload, answer ----------------------------------------------------
  const pad = $("pad");
  const ink = pad.getContext("2d");
  let padEmpty = true;
  let drawing = false; // a stroke is under way: answers update the screen, not the screen reader
  let inFlight = false;
  let again = false;
  let speakNext = false;

  function clearPad() {
    ink.fillStyle = "#fff";
    ink.fillRect(0, 0, pad.width, pad.height);
    padEmpty = true;
  }

  function showAnswer(result, speak) {
    const p = result.probabilities;
    const digit = $("digit");
    const recognised = result.recognised !== false; // absent (older servers): every answer is a digit
    const sure = percent(p[result.label]);
    digit.dataset.empty = "false";
    digit.dataset.label = String(result.label);
    digit.classList.toggle("refused", !recognised);
    digit.textContent = recognised ? String(result.label) : "That does not look like a digit.";
    $("confidence").textContent = recognised
      ? `${sure} sure (model ${result.model} v${result.version})`
      : `LeNet's closest guess is ${result.label} (${sure}), but the image matches no digit strongly enough to be called one (model ${result.model} v${result.version}).`;
    $("glance-digit").textContent = recognised ? String(result.label) : "?";
    $("glance-pct").textContent = recognised ? sure : "not a digit";
    const bars = $("bars");
    bars.dataset.empty = "false";
    bars.classList.toggle("unsure", !recognised);
    p.forEach((value, d) => {
      const row = bars.children[d];
      row.classList.toggle("best", d === result.label);
      row.querySelector(".fill").style.width = `${(100 * value).toFixed(2)}%`;
      row.querySelector(".pct").textContent = percent(value);
      row.querySelector(".track").setAttribute("aria-valuenow", (100 * value).toFixed(1));
      row.querySelector(".track").setAttribute("aria-valuetext", percent(value));
    });
    if (result.input) drawInput(result.input);
    if (speak) {
      $("announce").textContent = recognised
        ? `LeNet reads ${result.label}, ${sure} sure.`
        : `That does not look like a digit; the closest is ${result.label}.`;
    }
  }

  function resetAnswer(message) {
    const digit = $("digit");
    digit.textContent = "";
    digit.dataset.empty = "true";
    digit.classList.remove("refused");
    delete digit.dataset.label;
    $("confidence").textContent = message;
    $("glance-digit").textContent = "";
    $("glance-pct").textContent = "";
    $("bars").dataset.empty = "true";
    $("bars").classList.remove("unsure");
    for (const row of $("bars").children) {
      row.classList.remove("best");
      row.querySelector(".fill").style.width = "0";
      row.querySelector(".pct").textContent = "–";
      row.querySelector(".track").setAttribute("aria-valuenow", "0");
      row.querySelector(".track").setAttribute("aria-valuetext", "no answer yet");
    }
    $("seen").hidden = true;
    $("seen-empty").hidden = false;
  }

  function drawInput(rows) {
    const seen = $("seen");
    const image = seen.getContext("2d").createImageData(32, 32);
    rows.forEach((row, y) =>
      row.forEach((v, x) => {
        const level = Math.round(255 * v); // ink high: white on black, as LeNet sees it
        image.data.set([level, level, level, 255], 4 * (32 * y + x));
      }),
    );
    seen.getContext("2d").putImageData(image, 0, 0);
    seen.hidden = false;
    $("seen-empty").hidden = true;
  }

  const PREDICT_IMAGE = "v1/lenet/predict-image?input=true";
  async function classify(blob) {
    const form = new FormData();
    form.append("image", blob, "digit.png");
    return (await call(PREDICT_IMAGE, { method: "POST", body: form })).json();
  }

  // One request at a time while drawing; the newest drawing is sent as soon as the last answer is in.
  // The screen reader hears the answer once, when the stroke has ended, never once per frame.
  async function predictDrawing(speak = false) {
    speakNext = speakNext || speak;
    if (inFlight) {
      again = true;
      return;
    }
    inFlight = true;
    pad.dataset.state = "busy"; // for people and tests alike: an answer is on its way
    const speaking = speakNext && !drawing;
    if (speaking) speakNext = false;
    try {
      const blob = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
      const result = await classify(blob);
      if (!padEmpty) showAnswer(result, speaking);
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
    ink.strokeStyle = ink.fillStyle = "#111";
    ink.beginPath();
    if (last === null) {
      ink.arc(x, y, ink.lineWidth / 2, 0, 2 * Math.PI); // a dot: a zero-length line draws nothing
      ink.fill();
    } else {
      ink.moveTo(...last);
      ink.lineTo(x, y);
      ink.stroke();
    }
    last = [x, y];
  }
  function hideUpload() {
    $("upload-figure").hidden = true;
  }
  pad.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    pad.setPointerCapture(e.pointerId);
    hideUpload();
    padEmpty = false;
    drawing = true;
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
    drawing = false;
    predictDrawing(true);
  };
  pad.addEventListener("pointerup", lift);
  pad.addEventListener("pointercancel", lift);

  $("clear").addEventListener("click", () => {
    clearPad();
    again = false;
    hideUpload();
    showError($("lenet-error"), null);
    resetAnswer("Draw, type or drop a digit to see the answer.");
    $("announce").textContent = "The pad is clear.";
  });
  $("pen").addEventListener("input", (e) => e.target.setAttribute("aria-valuetext", `${e.target.value} pixels`));

  // The keyboard's way to give a digit: written on the pad in one of this computer's faces.
  $("type-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const digit = $("typed").value.trim();
    if (!/^[0-9]$/.test(digit)) return;
    clearPad();
    hideUpload();
    ink.fillStyle = "#111";
    ink.textAlign = "center";
    ink.textBaseline = "middle";
    ink.font = `200px ${$("face").value}`;
    ink.fillText(digit, pad.width / 2, pad.height / 2 + 10);
    padEmpty = false;
    predictDrawing(true);
  });

  async function classifyFile(file) {
    if (!file) return;
    clearPad();
    hideUpload();
    resetAnswer(`Sending ${file.name}…`);
    const box = $("upload");
    const bar = $("upload-progress");
    box.hidden = false;
    bar.value = 0;
    $("upload-label").textContent = `Uploading ${file.name}…`;
    const form = new FormData();
    form.append("image", file, file.name);
    try {
      const result = await upload(PREDICT_IMAGE, form, (fraction) => {
        if (fraction === 1) {
          bar.removeAttribute("value"); // sent: the server decodes, an unknown while
          $("upload-label").textContent = `The server is reading ${file.name}…`;
        } else if (fraction !== null) bar.value = Math.round(100 * fraction);
      });
      showAnswer(result, true);
      showError($("lenet-error"), null);
      const preview = $("upload-preview"); // shown once the server took it as an image: never a broken icon
      if (preview.src) URL.revokeObjectURL(preview.src);
      preview.src = URL.createObjectURL(file);
      preview.alt = `The uploaded image, ${file.name}`;
      $("upload-caption").textContent = `Uploaded: ${file.name}`;
      $("upload-figure").hidden = false;
    } catch (e) {
      resetAnswer(`${file.name} was refused.`);
      showError($("lenet-error"), e);
    } finally {
      box.hidden = true;
    }
  }
  const drop = $("drop");
  $("file").addEventListener("change", (e) => {
    classifyFile(e.target.files[0]);
    e.target.value = "";
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
        `<span class="label" aria-hidden="true">${digit}</span>` +
        `<span class="track" role="meter" aria-label="probability of ${digit}" aria-valuemin="0" aria-valuemax="100" aria-valuenow="0">` +
        `<span class="fill"></span></span><span class="pct" aria-hidden="true"></span>`;
      bars.append(row);
    }
  }

  // ---- Blobs: heat map from one request, centres, exact answers --------------------------------------
  const plane = $("plane");
  const RANGE = 2.5; // the plane shows [-RANGE, RANGE] on both axes
  const GRID = 64; // 64 x 64 = 4096 points: the most one /v1/blobs/predict request takes
  let heat = null;
  let heatValues = null;
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
      heatValues = answer.probabilities;
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

  // Text on the map: dark on a white halo, readable over blue, white and red alike.
  function label(g, text, x, y) {
    g.lineWidth = 4;
    g.strokeStyle = "rgba(255, 255, 255, 0.92)";
    g.lineJoin = "round";
    g.strokeText(text, x, y);
    g.fillStyle = "#111827";
    g.fillText(text, x, y);
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
    for (let v = -2; v <= 2; v++) {
      const [px, py] = toPixel([v, v]);
      g.beginPath();
      g.moveTo(px, 0);
      g.lineTo(px, plane.height);
      g.moveTo(0, py);
      g.lineTo(plane.width, py);
      g.stroke();
    }
    g.font = "bold 14px system-ui, sans-serif";
    for (let v = -2; v <= 2; v++) {
      const [px, py] = toPixel([v, v]);
      if (v !== 0) {
        label(g, String(v), px + 4, toPixel([0, 0])[1] - 5);
        label(g, String(v), toPixel([0, 0])[0] + 5, py - 4);
      }
    }
    centres.forEach(({ at, label: l }) => {
      const [px, py] = toPixel(at);
      g.beginPath();
      g.arc(px, py, 9, 0, 2 * Math.PI);
      g.lineWidth = 3;
      g.strokeStyle = "#fff";
      g.stroke();
      g.lineWidth = 1.5;
      g.strokeStyle = "#1b2330";
      g.stroke();
      label(g, l === undefined ? "centre" : `label ${l}`, px + 13, py + 5);
    });
    const [cx, cy] = toPixel(cursor);
    for (const [width, colourName] of [[5, "#fff"], [2, "#111"]]) {
      g.strokeStyle = colourName;
      g.lineWidth = width;
      g.beginPath();
      g.moveTo(cx - 11, cy);
      g.lineTo(cx + 11, cy);
      g.moveTo(cx, cy - 11);
      g.lineTo(cx, cy + 11);
      g.stroke();
    }
  }

  // What the map shows under the cursor, from the one grid request (the model is asked on Enter)
  function mapValue([x, y]) {
    if (!heatValues) return null;
    const i = Math.min(GRID - 1, Math.max(0, Math.floor(((x + RANGE) / (2 * RANGE)) * GRID)));
    const j = Math.min(GRID - 1, Math.max(0, Math.floor(((RANGE - y) / (2 * RANGE)) * GRID)));
    return heatValues[j * GRID + i];
  }

  async function askPoint(x, y) {
    cursor = [round3(x), round3(y)];
    $("px").value = cursor[0];
    $("py").value = cursor[1];
    drawPlane();
    try {
      const answer = await postJSON("v1/blobs/predict", { x: [cursor] });
      const p = answer.probabilities[0];
      $("point").textContent = `(${fmt(cursor[0])}, ${fmt(cursor[1])})`;
      $("point").dataset.x = String(cursor[0]);
      $("point").dataset.y = String(cursor[1]);
      $("probability").textContent = p.toFixed(4);
      $("probability").dataset.value = String(p); // exactly what the server answered
      $("label").textContent = String(answer.labels[0]);
      $("point-announce").textContent = `At (${fmt(cursor[0])}, ${fmt(cursor[1])}): label ${answer.labels[0]}, P(label 1) ${p.toFixed(3)}.`;
      showError($("blobs-error"), null);
    } catch (e) {
      $("probability").textContent = "–";
      delete $("probability").dataset.value;
      $("label").textContent = "–";
      showError($("blobs-error"), e);
    }
  }

  let cursorTimer = null;
  function announceCursor() {
    clearTimeout(cursorTimer); // one announcement once the keys rest, not one per step
    cursorTimer = setTimeout(() => {
      const p = mapValue(cursor);
      const map = p === null ? "" : `, the map shows P(label 1) about ${p.toFixed(2)}`;
      $("plane-cursor").textContent = `Cursor at x ${fmt(cursor[0])}, y ${fmt(cursor[1])}${map}. Enter asks the model.`;
    }, 250);
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
      announceCursor();
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

  // Round tick values (1, 2 or 5 times a power of ten) covering [lo, hi]
  function ticks(lo, hi, count = 5) {
    const span = hi - lo || Math.abs(hi) || 1;
    const raw = span / count;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.round(v / step) * step);
    return out;
  }

  function showValue(element, value) {
    element.textContent = fmt(value);
    element.dataset.value = String(value); // exactly what the server answered
  }

  async function drawLine() {
    const chart = $("line-chart");
    const from = Number($("lfrom").value);
    const to = Number($("lto").value);
    const xs = Array.from({ length: 101 }, (_, i) => from + ((to - from) * i) / 100);
    try {
      if (!(to > from)) throw new ServerError(0, `x from (${fmt(from)}) must be less than to (${fmt(to)})`);
      const { y } = await postJSON("v1/linear/predict", { x: xs });
      const [w, h, m, left] = [520, 300, 36, 70]; // room for the y labels on the left
      const lo = Math.min(...y);
      const hi = Math.max(...y);
      const sx = (x) => left + ((x - from) / (to - from)) * (w - left - m);
      const sy = (v) => h - m - ((v - lo) / (hi - lo || 1)) * (h - 2 * m);
      for (const node of [...chart.children]) if (node.tagName !== "title") node.remove();
      for (const gx of ticks(from, to)) {
        svg("line", { x1: sx(gx), x2: sx(gx), y1: m, y2: h - m, class: "grid-line" }, chart);
        svg("text", { x: sx(gx), y: h - m + 16, "text-anchor": "middle" }, chart).textContent = fmt(gx);
      }
      for (const gy of ticks(lo, hi)) {
        svg("line", { x1: left, x2: w - m, y1: sy(gy), y2: sy(gy), class: "grid-line" }, chart);
        svg("text", { x: left - 6, y: sy(gy) + 4, "text-anchor": "end" }, chart).textContent = fmt(gy);
      }
      svg("line", { x1: left, x2: w - m, y1: h - m, y2: h - m, class: "axis" }, chart);
      svg("line", { x1: left, x2: left, y1: m, y2: h - m, class: "axis" }, chart);
      svg("polyline", { points: xs.map((x, i) => `${sx(x)},${sy(y[i])}`).join(" "), class: "fit" }, chart);
      svg("text", { x: w - m, y: h - 8, "text-anchor": "end" }, chart).textContent = "x";
      svg("text", { x: left - 6, y: m - 12, "text-anchor": "end" }, chart).textContent = "y";
      const slope = (y[100] - y[0]) / (to - from);
      const intercept = y[0] - slope * from;
      $("line-fit").textContent = `From ${xs.length} points: y ≈ ${intercept.toFixed(3)} + ${slope.toFixed(3)}·x (the data was 5 + 7x + noise).`;
      $("line-title").textContent = `The fitted line y ≈ ${intercept.toFixed(2)} + ${slope.toFixed(2)}·x for x from ${fmt(from)} to ${fmt(to)}`;
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
      showValue($("ly"), y[0]);
      showError($("linear-error"), null);
      await drawLine();
    } catch (e) {
      $("ly").textContent = "–";
      delete $("ly").dataset.value;
      for (const mark of $("line-chart").querySelectorAll(".mark")) mark.remove(); // no answer: no point on the line
      showError($("linear-error"), e);
    }
  }

  async function predictMulti() {
    try {
      const row = ["m1", "m2", "m3"].map((id) => Number($(id).value));
      const { y } = await postJSON("v1/multilinear/predict", { x: [row] });
      showValue($("my"), y[0]);
      showError($("multi-error"), null);
    } catch (e) {
      $("my").textContent = "–";
      delete $("my").dataset.value;
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
  // Card keys as sentences; a key not listed reads with its underscores as spaces
  const READABLE = {
    test_accuracy: "accuracy on held-out data",
    test_cross_entropy: "cross-entropy on held-out data",
    test_bce: "binary cross-entropy on held-out data",
    test_rows: "held-out rows",
    train_rows: "training rows",
    train_mse: "mean squared error on training data",
    train_mse_least_squares: "least squares' mean squared error",
    mse_ratio: "mean squared error over least squares'",
    b: "intercept b",
    w: "slope w",
    b_least_squares: "least squares' intercept",
    w_least_squares: "least squares' slope",
    "p_label1_at_-1_1": "P(label 1) at (−1, 1)",
    parity_max_abs_diff: "largest difference, ONNX against PyTorch",
    drawn_accuracy: "accuracy on drawn digits",
    drawn_rows: "drawn digits",
    typed_accuracy: "accuracy on typed digits",
    typed_rows: "typed digits",
    max_lr: "peak learning rate",
    lr: "learning rate",
    batch_size: "batch size",
    full_batch: "full batch",
    printed_per_batch: "printed digits per batch",
    center_labels: "label of each centre",
    centers: "cluster centres",
    mnist_28x28: "MNIST's 28×28 images",
    x: "input x",
    n: "rows",
    recognition: "when an image counts as a digit",
    test_recognised: "held-out digits counted as digits",
    letters_refused: "unseen letters refused (those not written like a digit)",
    scribbles_refused: "unseen scribbles refused",
    not_digits_per_batch: "letters and scribbles per batch",
    not_digit_weight: "weight of the not-a-digit loss",
    digit_energy: "a digit's log-sum-exp of logits, at least",
    not_digit_energy: "the others', at most",
    letter_sizes: "sizes of each letter",
    scribbles: "scribbles drawn for training",
  };
  const VALUES = { max_logit: "the largest logit reaches the threshold" };
  const readable = (key) => READABLE[key] || key.replace(/_/g, " ");
  const PICTURES = {
    "lenet_confusion.png": "Confusion matrix on the held-out digits, and the training loss",
    "lenet_misclassified.png": "The held-out digits LeNet gets wrong",
    "blobs.png": "The decision boundary over the training points",
    "linear.png": "The fitted line over the training data",
    "multilinear.png": "Predicted against true final scores",
  };
  function show(v) {
    if (typeof v === "number") return fmt(v);
    if (typeof v === "string" && VALUES[v]) return `${VALUES[v]} (${v})`;
    if (Array.isArray(v)) return v.map((x) => (Array.isArray(x) ? `(${show(x)})` : show(x))).join(", ");
    if (typeof v === "object" && v !== null) return Object.entries(v).map(([k, x]) => `${readable(k)}: ${show(x)}`).join(", ");
    return String(v);
  }

  function table(caption, entries, raw = true) {
    const section = document.createDocumentFragment();
    section.append(text("h3", caption));
    const t = document.createElement("table");
    for (const [k, v] of entries) {
      const head = text("th", readable(k), { scope: "row" });
      if (raw && readable(k) !== k) head.append(text("code", k)); // the key as the card spells it
      t.insertRow().append(head, text("td", show(v)));
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
    $("models-loading").hidden = false;
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
          text("span", `version ${info.version}`, { class: "badge" }),
          text("span", info.ready ? "ready" : "not ready", { class: `badge ${info.ready ? "ready" : "down"}` }),
          text("span", info.provider, { class: "badge provider" }),
        );
        article.append(header, text("p", card.description, { class: "description" }));
        const tensors = (list) => list.map((t) => `${t.name} ${t.dtype} [${t.shape.join(", ")}]`).join("; ");
        article.append(
          table(
            "Model",
            [
              ["task", card.task],
              ["inputs", tensors(card.inputs)],
              ["outputs", tensors(card.outputs)],
              ...(card.labels ? [["labels", card.labels.join(" ")]] : []),
              ["versions", info.versions.join(", ")],
              ["sha256", card.sha256],
              ["ONNX opset", card.opset],
              ["producer", `${card.producer.name} ${card.producer.version}, onnx ${card.producer.onnx}`],
              ["seed", card.seed],
            ],
            false,
          ),
          table("Metrics", Object.entries(card.metrics)),
          table("Recipe", Object.entries(card.recipe)),
          table("Data", Object.entries(card.data)),
          table("Preprocessing", Object.entries(card.preprocessing)),
        );
        if (card.extra && Object.keys(card.extra).length) article.append(table("Serving", Object.entries(card.extra)));
        if (info.pictures && info.pictures.length) {
          article.append(text("h3", "Training pictures"));
          for (const file of info.pictures) {
            const figure = document.createElement("figure");
            figure.append(text("figcaption", PICTURES[file] || readable(file.replace(/\.png$/, ""))));
            article.append(figure);
            picture(info.name, file, figure);
          }
        }
        cards.append(article);
      }
      showError($("models-error"), null);
    } catch (e) {
      showError($("models-error"), e);
      shown.delete("models"); // try again when the tab is shown again (e.g. with a token)
    } finally {
      $("models-loading").hidden = true;
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
  resetAnswer("Draw, type or drop a digit to see the answer.");
  pollForever();
  const first = tabs.find((t) => `#${t.id.replace("tab-", "")}` === location.hash) || tabs[0];
  select(first, false);
})();

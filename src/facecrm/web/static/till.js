// The till's face-checkout screen (docs/face-checkout.md), over the JSON payment API with
// the till's browser session (every call carries the session's CSRF token).
// The cashier types the amount; the camera runs only while a payment is under way:
// bursts of frames while `looking`, then one burst from the challenge's clock 0 to
// `smile_after_ms` + 2.5 s with "Smile now" at `smile_after_ms`; the step-up keypad when
// asked; the result. "Pay another way" is always there and cancels the session. The
// screen never shows who the customer is (the API tells a till no name anyway).
"use strict";
(() => {
  const API = "/api/v1/pay";
  const LOOKING_FRAMES = 8; // ~1 s of frames per burst while looking for the customer
  const LOOKING_SPACING_MS = 125;
  const LOOKING_BURSTS = 6; // the server declines `no_face` sooner; this only bounds a loop
  const BURST_FRAMES = 12; // MAX_BURST_FRAMES of the protocol
  const AFTER_SMILE_MS = 2500; // the challenge burst runs to smile_after_ms + this
  const FRAME_WIDTH = 640;
  const JPEG_QUALITY = 0.85;
  const FINAL = new Set(["authorised", "declined"]);

  const $ = (id) => document.getElementById(id);
  const video = $("video");
  const prompt = $("prompt");
  const amountShown = $("amount-shown");
  const amountForm = $("amount-form");
  const keypad = $("keypad");
  const result = $("result");
  const digitsShown = $("digits");
  const confirmButton = $("confirm");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const till = document.body.dataset.till;
  const messages = $("messages").content;
  const canvas = document.createElement("canvas");

  let current = null; // the payment session as the server last answered it
  let run = 0; // bumped by "pay another way" and "new payment": stale steps stop
  let stream = null;
  let digits = "";

  class Stopped extends Error {}
  class ApiFailure extends Error {
    constructor(status, problem) {
      super(problem.detail || "HTTP " + status);
      this.status = status;
      this.reason = problem.reason || "http_" + status;
    }
  }

  function text(key, values = {}) {
    const node = messages.querySelector(`[data-key="${key}"]`);
    let found = node ? node.textContent : "";
    for (const [name, value] of Object.entries(values)) found = found.replace(`{${name}}`, value);
    return found;
  }

  function say(key) {
    prompt.textContent = key ? text(key) : "";
    prompt.classList.toggle("smile", key === "smile");
  }

  function show(mode) {
    amountForm.hidden = mode !== "entry";
    keypad.hidden = mode !== "keypad";
    result.hidden = mode !== "result";
    document.body.dataset.mode = mode;
  }

  const check = (gen) => {
    if (gen !== run) throw new Stopped();
  };
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function api(method, path, body, headers = {}) {
    const sent = { "X-CSRF-Token": csrf, Accept: "application/json", ...headers };
    let payload = body;
    if (body !== undefined && !(body instanceof FormData)) {
      sent["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    const response = await fetch(API + path, {
      method,
      headers: sent,
      body: payload,
      credentials: "same-origin",
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiFailure(response.status, data);
    return data;
  }

  function currencyFormat(currency) {
    try {
      return new Intl.NumberFormat(document.documentElement.lang, { style: "currency", currency });
    } catch {
      return null; // not a currency code
    }
  }

  function money(minor, currency) {
    const format = currencyFormat(currency);
    if (!format) return `${minor} ${currency}`;
    return format.format(minor / 10 ** format.resolvedOptions().maximumFractionDigits);
  }

  // "12.50" in EUR -> 1250 (minor units, by the currency's decimals); null if not an amount
  function toMinor(raw, currency) {
    const format = currencyFormat(currency);
    const found = /^(\d{1,7})(?:[.,](\d*))?$/.exec(raw.trim());
    if (!format || !found) return null;
    const decimals = format.resolvedOptions().maximumFractionDigits;
    const fraction = found[2] || "";
    if (fraction.length > decimals) return null;
    const minor = Number(found[1]) * 10 ** decimals + Number(fraction.padEnd(decimals, "0") || 0);
    return minor > 0 ? minor : null;
  }

  async function startCamera() {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { width: 640, height: 480 },
      audio: false,
    });
    video.srcObject = stream;
    await video.play().catch(() => {});
    if (!video.videoWidth) {
      await new Promise((resolve) => video.addEventListener("loadeddata", resolve, { once: true }));
    }
  }

  function stopCamera() {
    if (stream) stream.getTracks().forEach((track) => track.stop());
    stream = null;
    video.srcObject = null;
  }

  function grab() {
    const scale = Math.min(1, FRAME_WIDTH / video.videoWidth);
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    return new Promise((resolve, reject) =>
      canvas.toBlob(
        (blob) => (blob ? resolve(blob) : reject(new Error("no frame"))),
        "image/jpeg",
        JPEG_QUALITY,
      ),
    );
  }

  // frames at `times` (ms on `clock`, a performance.now() origin), each with its real at_ms
  async function capture(gen, clock, times) {
    const frames = [];
    for (const time of times) {
      const wait = clock + time - performance.now();
      if (wait > 0) await sleep(wait);
      check(gen);
      const at = Math.max(0, Math.round(performance.now() - clock));
      frames.push({ blob: await grab(), at });
    }
    return frames;
  }

  async function send(gen, frames) {
    const form = new FormData();
    frames.forEach((frame, i) => form.append("frames", frame.blob, `frame-${i}.jpg`));
    frames.forEach((frame) => form.append("at_ms", String(frame.at)));
    const answer = await api("POST", `/sessions/${current.id}/frames`, form);
    check(gen);
    current = answer;
    return answer;
  }

  async function look(gen, opened) {
    let session = current;
    for (let burst = 0; session.state === "looking"; burst++) {
      if (burst === LOOKING_BURSTS) throw new ApiFailure(0, { reason: "still_looking" });
      say("looking");
      const start = performance.now() - opened;
      const times = Array.from({ length: LOOKING_FRAMES }, (_, i) => start + i * LOOKING_SPACING_MS);
      session = await send(gen, await capture(gen, opened, times));
    }
    return session;
  }

  async function challenge(gen, session) {
    const clock = performance.now(); // the protocol's clock starts at the challenge answer
    const smileAt = session.smile_after_ms;
    say("hold");
    const prompting = setTimeout(() => gen === run && say("smile"), Math.max(0, smileAt));
    const total = smileAt + AFTER_SMILE_MS;
    const times = Array.from({ length: BURST_FRAMES }, (_, i) => (i * total) / (BURST_FRAMES - 1));
    let frames;
    try {
      frames = await capture(gen, clock, times);
    } finally {
      clearTimeout(prompting);
    }
    say("checking");
    return send(gen, frames);
  }

  function finish(message, detail, outcome) {
    stopCamera();
    say(null);
    show("result");
    $("result-text").textContent = message;
    $("result-detail").textContent = detail || "";
    result.dataset.outcome = outcome;
  }

  function settle(session) {
    current = session;
    if (session.state === "step_up") {
      stopCamera();
      say(null);
      digits = "";
      renderDigits();
      $("attempts").textContent = text("attempts", { n: session.step_up_attempts_left });
      show("keypad");
    } else if (session.state === "authorised") {
      finish(text("paid", { amount: money(session.amount, session.currency) }), "", "paid");
    } else if (session.state === "declined") {
      const reason = session.decline_reason;
      finish(text(`declined.${reason}`) || text("error"), reason, "declined");
    } else {
      failed(new ApiFailure(0, { reason: `unexpected_${session.state}` }));
    }
  }

  // anything uncertain: the session is cancelled (it would expire anyway), card or PIN
  function failed(err) {
    const session = current;
    run++;
    current = null;
    if (session && !FINAL.has(session.state)) {
      api("POST", `/sessions/${session.id}/cancel`).catch(() => {});
    }
    finish(text("error"), err.reason || err.name, "error");
  }

  async function pay(minor, currency) {
    const gen = ++run;
    show("busy");
    say("starting");
    amountShown.textContent = money(minor, currency);
    try {
      await startCamera();
      check(gen);
    } catch (err) {
      if (!(err instanceof Stopped)) finish(text("no_camera"), err.name, "error");
      return;
    }
    try {
      const key = { "Idempotency-Key": crypto.randomUUID() };
      const opened = await api("POST", "/sessions", { amount: minor, currency, till }, key);
      if (gen !== run) {
        api("POST", `/sessions/${opened.id}/cancel`).catch(() => {}); // cancelled meanwhile
        return;
      }
      current = opened;
      let session = await look(gen, performance.now());
      if (session.state === "challenge") session = await challenge(gen, session);
      settle(session);
    } catch (err) {
      if (!(err instanceof Stopped)) failed(err);
    }
  }

  function renderDigits() {
    digitsShown.textContent = "•".repeat(digits.length) + "_".repeat(4 - digits.length);
    confirmButton.disabled = digits.length !== 4;
  }

  function press(digit) {
    if (keypad.hidden || digits.length >= 4) return;
    digits += digit;
    renderDigits();
  }

  async function submitDigits() {
    if (digits.length !== 4 || !current) return;
    const gen = run;
    const typed = digits;
    digits = "";
    renderDigits();
    confirmButton.disabled = true;
    try {
      const session = await api("POST", `/sessions/${current.id}/step-up`, { digits: typed });
      check(gen);
      settle(session);
    } catch (err) {
      if (!(err instanceof Stopped)) failed(err);
    }
  }

  amountForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const currency = $("currency").value.trim().toUpperCase();
    const minor = toMinor($("amount").value, currency);
    if (minor === null) {
      say("bad_amount");
      return;
    }
    pay(minor, currency);
  });

  for (const key of keypad.querySelectorAll("[data-digit]")) {
    key.addEventListener("click", () => press(key.dataset.digit));
  }
  $("erase").addEventListener("click", () => {
    digits = digits.slice(0, -1);
    renderDigits();
  });
  confirmButton.addEventListener("click", submitDigits);
  document.addEventListener("keydown", (event) => {
    if (keypad.hidden) return;
    if (/^[0-9]$/.test(event.key)) press(event.key);
    else if (event.key === "Backspace") $("erase").click();
    else if (event.key === "Enter") submitDigits();
  });

  $("other-way").addEventListener("click", () => {
    const session = current;
    run++;
    current = null;
    const open = session && !FINAL.has(session.state);
    finish(text(open ? "declined.cancelled" : "other_way"), "", "other_way");
    if (open) api("POST", `/sessions/${session.id}/cancel`).catch(() => {}); // expires anyway
  });

  $("next").addEventListener("click", () => {
    run++;
    current = null;
    stopCamera();
    say(null);
    amountShown.textContent = "";
    amountForm.reset();
    show("entry");
    $("amount").focus();
  });

  $("fullscreen").addEventListener("click", () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else document.documentElement.requestFullscreen().catch(() => {});
  });

  renderDigits();
  show("entry");
})();

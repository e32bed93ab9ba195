// Enrollment (console page and kiosk): consent text by language, camera or upload with a
// preview of the exact photo sent, one POST; the kiosk clears everything after each
// enrollment, on "Cancel" and when left idle, and returns to its welcome screen.
"use strict";
(() => {
  const form = document.getElementById("enroll");
  const kiosk = form.dataset.mode === "kiosk";
  const video = document.getElementById("video");
  const canvas = document.getElementById("snapshot");
  const preview = document.getElementById("preview");
  const previewBox = document.getElementById("preview-box");
  const state = document.getElementById("photo-state");
  const result = document.getElementById("result");
  const upload = document.getElementById("upload");
  const takeButton = document.getElementById("take-photo");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  let captured = null; // a Blob from the camera
  let stream = null;

  const showLanguage = wireConsentLanguage(); // consent.js

  function showPreview(source, width, height) {
    preview.width = width;
    preview.height = height;
    preview.getContext("2d").drawImage(source, 0, 0, width, height);
    previewBox.hidden = false;
  }

  function clearPhoto() {
    captured = null;
    upload.value = "";
    preview.width = 0;
    preview.height = 0;
    previewBox.hidden = true;
    state.textContent = "No photo yet.";
  }

  function stopCamera() {
    if (stream) stream.getTracks().forEach((track) => track.stop());
    stream = null;
    video.srcObject = null;
    takeButton.disabled = true;
  }

  function clearAll() {
    form.reset(); // every field and consent box back to its default
    clearPhoto();
    stopCamera();
    showLanguage();
    result.textContent = "";
    result.className = "";
  }

  document.getElementById("start-camera").addEventListener("click", async () => {
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
      video.srcObject = stream;
      takeButton.disabled = false;
      state.textContent = "Camera on: frame the face and take the photo.";
    } catch (err) {
      state.textContent = "The camera is not available (" + err.name + "); upload a photo instead.";
    }
  });

  takeButton.addEventListener("click", () => {
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob((blob) => {
      captured = blob;
      upload.value = "";
      showPreview(canvas, canvas.width, canvas.height);
      state.textContent = "Photo taken (" + canvas.width + "×" + canvas.height + ").";
    }, "image/jpeg", 0.92);
  });

  upload.addEventListener("change", async () => {
    captured = null;
    if (!upload.files.length) {
      clearPhoto();
      return;
    }
    state.textContent = "Photo chosen: " + upload.files[0].name;
    try { // drawn from the file itself: the page's policy allows no blob: images
      const bitmap = await createImageBitmap(upload.files[0]);
      showPreview(bitmap, bitmap.width, bitmap.height);
      bitmap.close();
    } catch (err) {
      previewBox.hidden = true;
      state.textContent += " (no preview for this file)";
    }
  });

  document.getElementById("retake").addEventListener("click", clearPhoto);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    if (captured) data.set("image", captured, "camera.jpg");
    if (!data.get("image") || !data.get("image").size) {
      result.textContent = "Take or choose a photo first.";
      result.className = "error";
      return;
    }
    result.textContent = "Checking the photo…";
    result.className = "";
    const response = await fetch(form.dataset.action, {
      method: "POST", body: data, headers: { "X-CSRF-Token": csrf }, credentials: "same-origin",
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      result.textContent = "Not enrolled: " + (body.detail || response.statusText) +
        (body.reason ? " (" + body.reason + ")" : "");
      result.className = "error";
      return;
    }
    clearAll();
    if (kiosk) {
      welcome("Thank you, you are enrolled.");
      return;
    }
    const link = document.createElement("a");
    link.href = body.url;
    link.textContent = "Open the customer card";
    result.replaceChildren("Enrolled. ", link);
    result.className = "ok";
  });

  if (!kiosk) return;

  // -- kiosk: welcome screen, cancel and idle reset ------------------------------------
  const welcomeScreen = document.getElementById("welcome");
  const thanks = document.getElementById("thanks");
  const idleMs = 1000 * Number(form.dataset.idleSeconds || 60);
  let idleTimer = null;

  function welcome(message) {
    clearAll();
    clearTimeout(idleTimer);
    form.hidden = true;
    welcomeScreen.hidden = false;
    thanks.textContent = message || "";
  }

  function touched() {
    clearTimeout(idleTimer);
    if (!form.hidden) idleTimer = setTimeout(() => welcome(""), idleMs);
  }

  const begin = document.getElementById("begin");
  begin.addEventListener("click", () => {
    welcomeScreen.hidden = true;
    form.hidden = false;
    thanks.textContent = "";
    touched();
  });
  // the page renders "Start" disabled: a tap before this script ran would do nothing
  begin.disabled = false;
  document.getElementById("cancel").addEventListener("click", () => welcome(""));
  for (const kind of ["input", "change", "pointerdown", "keydown"]) {
    form.addEventListener(kind, touched);
  }
})();

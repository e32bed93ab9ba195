// Kiosk / associate enrollment: camera (getUserMedia) or upload, then one POST.
"use strict";
(() => {
  const form = document.getElementById("enroll");
  const video = document.getElementById("video");
  const canvas = document.getElementById("snapshot");
  const state = document.getElementById("photo-state");
  const result = document.getElementById("result");
  const upload = document.getElementById("upload");
  const takeButton = document.getElementById("take-photo");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  let captured = null; // a Blob from the camera

  document.getElementById("start-camera").addEventListener("click", async () => {
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
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
      state.textContent = "Photo taken (" + canvas.width + "×" + canvas.height + ").";
    }, "image/jpeg", 0.92);
  });

  upload.addEventListener("change", () => {
    captured = null;
    state.textContent = upload.files.length ? "Photo chosen: " + upload.files[0].name : "No photo yet.";
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    data.append("consent_version", form.dataset.consentVersion);
    if (captured) data.set("image", captured, "camera.jpg");
    if (!data.get("image") || !data.get("image").size) {
      result.textContent = "Take or choose a photo first.";
      result.className = "error";
      return;
    }
    result.textContent = "Checking the photo…";
    result.className = "";
    const response = await fetch("/console/enroll", {
      method: "POST", body: data, headers: { "X-CSRF-Token": csrf }, credentials: "same-origin",
    });
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      result.innerHTML = 'Enrolled. <a href="' + body.url + '">Open the customer card</a>';
      result.className = "ok";
    } else {
      result.textContent = "Not enrolled: " + (body.detail || response.statusText) +
        (body.reason ? " (" + body.reason + ")" : "");
      result.className = "error";
    }
  });
})();

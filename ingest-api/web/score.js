// The scoring form. It posts exactly what the mini-program's wx.request
// sends: form-urlencoded, every value JSON.stringify'd, to /score, with an
// Idempotency-Key. The server validates; this page only shows what it says.
// The answer's results token (X-Results-Token) is what reads this number's
// ratings: it is kept in localStorage under "resultsToken:<number>", never
// in a URL, for the results page now and later.
"use strict";

const FIELDS = ["acc_nbr", "grade1", "grade2", "grade3", "txt1", "txt2", "txt3"];
const TOAST_MS = 1200;

const form = document.getElementById("score-form");
const gradeMin = Number(form.dataset.gradeMin);
const gradeMax = Number(form.dataset.gradeMax);
const textMax = Number(form.dataset.textMax);

const MESSAGES = {
  acc_nbr: "請輸入有效的手機號碼",
  grade: `請選擇 ${gradeMin} 到 ${gradeMax} 分`,
  txt: `意見無效或過長（最多 ${textMax} 字）`,
  unavailable: "服務暫時繁忙，請稍後再試",
  network: "網絡連接失敗，請檢查網絡後重試",
};

for (const picker of document.querySelectorAll(".picker")) {
  for (let grade = gradeMin; grade <= gradeMax; grade += 1) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "radio";
    input.name = picker.dataset.name;
    input.value = String(grade);
    const text = document.createElement("span");
    text.textContent = String(grade);
    label.append(input, text);
    picker.append(label);
  }
}

function showToast(message) {
  const toast = document.getElementById("toast");
  toast.textContent = message;
  toast.hidden = false;
  return new Promise((resolve) => setTimeout(() => {
    toast.hidden = true;
    resolve();
  }, TOAST_MS));
}

function setError(field, message) {
  const container = form.querySelector(`[data-field="${field}"]`);
  const error = document.getElementById(`${field}-error`);
  container.classList.toggle("invalid", Boolean(message));
  error.textContent = message || "";
  error.hidden = !message;
}

function setFormError(message) {
  const error = document.getElementById("form-error");
  error.textContent = message || "";
  error.hidden = !message;
}

function messageFor(field) {
  if (field === "acc_nbr") return MESSAGES.acc_nbr;
  if (field.startsWith("grade")) return MESSAGES.grade;
  return MESSAGES.txt;
}

// The values as the mini-program holds them: strings for the account and
// texts, numbers for the grades (undefined when none is picked, which
// JSON.stringify leaves out, as wx.request does).
function values() {
  const data = new FormData(form);
  const grade = (name) => (data.get(name) === null ? undefined : Number(data.get(name)));
  return {
    acc_nbr: form.acc_nbr.value.trim(),
    grade1: grade("grade1"),
    grade2: grade("grade2"),
    grade3: grade("grade3"),
    txt1: form.txt1.value,
    txt2: form.txt2.value,
    txt3: form.txt3.value,
  };
}

// A random key (RFC 4122 version 4). crypto.randomUUID exists only in
// secure contexts (https, localhost); getRandomValues everywhere.
function newIdempotencyKey() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// One Idempotency-Key per rating: a retry of the same body (after a
// failure or no answer) sends the key again, so the server records the
// rating once; a changed body is another rating and gets a new key (a key
// reused for another body is refused with 422). Forgotten once the rating
// is accepted.
let pending = null;

function idempotencyKeyFor(body) {
  if (pending === null || pending.body !== body) {
    pending = { body, key: newIdempotencyKey() };
  }
  return pending.key;
}

// Keeps the results token of a number; a browser that refuses storage
// (private mode) just cannot show the results later.
function keepResultsToken(number, token) {
  if (!token) return;
  try {
    window.localStorage.setItem(`resultsToken:${number}`, token);
  } catch (error) {
    // Storage refused: nothing to keep it in.
  }
}

function legacyBody(fields) {
  return Object.entries(fields)
    .filter(([, value]) => value !== undefined)
    .map(([name, value]) => `${encodeURIComponent(name)}=${encodeURIComponent(JSON.stringify(value))}`)
    .join("&");
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  FIELDS.forEach((field) => setError(field, ""));
  setFormError("");
  const fields = values();
  const button = document.getElementById("submit");
  button.disabled = true;
  try {
    const body = legacyBody(fields);
    const response = await fetch("/score", {
      method: "POST",
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        chartset: "utf-8",
        "idempotency-key": idempotencyKeyFor(body),
      },
      body,
    });
    const toast = await response.json().catch(() => "數據提交失敗");
    if (response.ok) {
      pending = null;
      const token = response.headers.get("x-consistency-token") || "";
      keepResultsToken(fields.acc_nbr, response.headers.get("x-results-token"));
      await showToast(toast);
      const query = new URLSearchParams({ phoneNum: fields.acc_nbr, after: token });
      window.location.assign(`/results?${query}`);
      return;
    }
    const invalid = (response.headers.get("x-invalid-fields") || "").split(",").filter(Boolean);
    invalid.forEach((field) => setError(field, messageFor(field)));
    if (invalid.length === 0) setFormError(MESSAGES.unavailable);
    await showToast(toast);
  } catch (error) {
    setFormError(MESSAGES.network);
  } finally {
    button.disabled = false;
  }
});

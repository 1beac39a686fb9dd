// The results page: an account's submissions and averages. Coming from a
// submission it passes the consistency token, so the new one is included.
// Results are private: the read sends the results token the scoring page
// kept for this number (localStorage "resultsToken:<number>"); without one
// the server refuses, and the page says to rate first.
"use strict";

const params = new URLSearchParams(window.location.search);
const phone = params.get("phoneNum") || "";
const after = params.get("after") || "";
let cursor = null;

function resultsToken(number) {
  try {
    return window.localStorage.getItem(`resultsToken:${number}`);
  } catch (error) {
    return null;
  }
}

const $ = (id) => document.getElementById(id);

function masked(number) {
  return number.length > 7 ? `${number.slice(0, 3)}****${number.slice(-4)}` : number;
}

function average(value) {
  return value === null ? "–" : value.toFixed(1);
}

function when(iso) {
  return new Date(iso).toLocaleString("zh-Hant", { hour12: false });
}

function notice(message) {
  $("notice").textContent = message;
  $("notice").hidden = false;
}

function row(score) {
  const item = document.createElement("li");
  const time = document.createElement("div");
  time.className = "when";
  time.textContent = when(score.insert_time);
  const grades = document.createElement("div");
  grades.className = "grades";
  grades.textContent = `評分 ${score.grade1} / ${score.grade2} / ${score.grade3}`;
  item.append(time, grades);
  for (const text of [score.txt1, score.txt2, score.txt3]) {
    if (!text) continue;
    const line = document.createElement("p");
    line.className = "text";
    line.textContent = text;
    item.append(line);
  }
  return item;
}

async function load() {
  const query = new URLSearchParams({ limit: "20" });
  if (after && cursor === null) query.set("after", after);
  if (cursor) query.set("cursor", cursor);
  const token = resultsToken(phone);
  const headers = token ? { authorization: `Bearer ${token}` } : {};
  let response;
  try {
    response = await fetch(`/v1/accounts/${encodeURIComponent(phone)}/scores?${query}`, { headers });
  } catch (error) {
    notice("網絡連接失敗，請稍後刷新");
    return;
  }
  if (response.status === 401) {
    // No valid token for this number on this device: the server does not
    // say whether it has ratings, and neither does the page.
    notice("請在評分後查看結果");
    return;
  }
  if (response.status === 400) {
    notice("手機號碼無效");
    return;
  }
  if (!response.ok) {
    notice("結果暫時無法取得，請稍後刷新");
    return;
  }
  const body = await response.json();
  const consistency = response.headers.get("x-consistency");
  if (consistency === "stale") {
    notice("剛提交的評分仍在處理中，稍後刷新即可看到");
  } else if (consistency === "rejected") {
    // The submission was accepted but could not be recorded; it will not
    // appear unless it is retried by an operator.
    notice("剛提交的評分未能記錄，請重新評分");
  }
  $("summary").hidden = false;
  $("submissions").textContent = String(body.summary.submissions);
  $("avg1").textContent = average(body.summary.avg_grade1);
  $("avg2").textContent = average(body.summary.avg_grade2);
  $("avg3").textContent = average(body.summary.avg_grade3);
  body.scores.forEach((score) => $("scores").append(row(score)));
  $("empty").hidden = body.summary.submissions > 0;
  cursor = body.next_cursor;
  $("more").hidden = !cursor;
}

$("account").textContent = `手機號碼 ${masked(phone)}`;
$("more").addEventListener("click", load);
load();

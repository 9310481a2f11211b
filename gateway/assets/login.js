// Sends the admin token to /api/login, which answers with an HttpOnly cookie.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("login");
  const error = document.getElementById("login-error");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await fetch("/api/login", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: document.getElementById("token").value }),
    });
    if (r.ok) {
      window.location.href = window.location.pathname === "/login" ? "/" : window.location.href;
    } else {
      error.hidden = false;
      error.textContent = (await r.text()).trim();
    }
  });
});

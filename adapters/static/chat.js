// Chinwag chat page. Plain script, no build step, nothing fetched from elsewhere.
//
// The conversation's id lives in localStorage: a "p-" id made of 192 random bits. It names this
// browser's own (private) channel and is its credential: whoever holds it may read, clear and
// configure that channel, and no other.
//
// Replies are Markdown (see renderMarkdown): markdown-it with raw HTML off turns them into HTML,
// DOMPurify keeps only the elements and links Markdown makes and hands them over as a DOM
// fragment, so no HTML string is ever assigned. Everything else (user messages, notices) is
// written with textContent.
//
// Files: the paperclip, drag-and-drop onto the page or a paste put files on the composer as chips
// (a thumbnail for images); they go with the message as base64 in its JSON. Each user message has
// a client-made id, which its delete button (on hover or focus) names to the server.
"use strict";

(() => {
  const STORAGE_KEY = "chinwag.channel";
  const OPTIONS_KEY = "chinwag.options";
  const PRIVATE_ID = /^p-[A-Za-z0-9_-]{22,126}$/;

  const log = document.getElementById("log");
  const empty = document.getElementById("empty");
  const form = document.getElementById("composer");
  const input = document.getElementById("input");
  const send = document.getElementById("send");
  const stop = document.getElementById("stop");
  const clear = document.getElementById("clear");
  const optionsForm = document.getElementById("options");
  const system = document.getElementById("system");
  const temperature = document.getElementById("temperature");
  const temperatureValue = document.getElementById("temperature-value");
  const temperatureDefault = document.getElementById("temperature-default");
  const optionsStatus = document.getElementById("options-status");
  const app = document.querySelector(".app");
  const chips = document.getElementById("chips");
  const attachStatus = document.getElementById("attach-status");
  const attachButton = document.getElementById("attach");
  const fileInput = document.getElementById("files");
  const dropHint = document.getElementById("drop-hint");

  function randomId(bytes) {
    const raw = new Uint8Array(bytes);
    crypto.getRandomValues(raw); // available on plain http too, unlike crypto.randomUUID
    let text = "";
    for (const byte of raw) text += String.fromCharCode(byte);
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function channelId() {
    let id = localStorage.getItem(STORAGE_KEY);
    if (!id || !PRIVATE_ID.test(id)) {
      id = "p-" + randomId(24);
      localStorage.setItem(STORAGE_KEY, id);
    }
    return id;
  }

  const channel = channelId();
  const base = `/api/channels/${encodeURIComponent(channel)}`;

  function scrollDown() {
    log.scrollTop = log.scrollHeight;
  }

  function addMessage(role, text, extraClass) {
    empty.hidden = true;
    const bubble = document.createElement("div");
    bubble.className = `message ${role}` + (extraClass ? ` ${extraClass}` : "");
    bubble.dataset.role = role;
    if (role === "assistant" && text) renderMarkdown(bubble, text);
    else bubble.textContent = text; // never innerHTML: the text is untrusted
    log.appendChild(bubble);
    scrollDown();
    return bubble;
  }

  // A user message: its text, then its files (`files`: {name, image, thumbnail} where thumbnail
  // is a blob: URL of the picked image, or null after a reload: the bytes are not kept).
  function addUserMessage(text, files, messageId) {
    const bubble = addMessage("user", "");
    if (text) {
      const body = document.createElement("span");
      body.className = "text";
      body.textContent = text;
      bubble.append(body);
    }
    if (files.length) {
      const list = document.createElement("ul");
      list.className = "files";
      list.setAttribute("aria-label", "Attached files");
      for (const file of files) list.append(fileItem(file));
      bubble.append(list);
    }
    if (messageId) bubble.dataset.messageId = messageId;
    scrollDown();
    return bubble;
  }

  function fileItem(file) {
    const item = document.createElement("li");
    item.className = "file";
    if (file.thumbnail) {
      const image = document.createElement("img");
      image.className = "thumb";
      image.src = file.thumbnail;
      image.alt = ""; // the name follows
      item.append(image);
    } else {
      item.append(icon(file.image ? "image" : "file"));
    }
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = file.name;
    item.append(name);
    return item;
  }

  // The names of a stored user message's files, from what they became for the model
  // (bot/attachments.py: "[file: NAME]" ... "[end of file]" blocks, "[image: NAME]" lines).
  function attachedFiles(attached) {
    const files = [];
    let inFile = false;
    for (const line of (attached || "").split("\n")) {
      if (inFile) {
        inFile = line !== "[end of file]";
        continue;
      }
      const file = /^\[file: (.+?)(?:, first [^\]]+)?\]$/.exec(line);
      const image = /^\[image: (.+)\]$/.exec(line);
      if (file) {
        files.push({ name: file[1], image: false, thumbnail: null });
        inFile = true;
      } else if (image) {
        files.push({ name: image[1], image: true, thumbnail: null });
      }
    }
    return files;
  }

  // Small line icons (drawn here, not emoji: a system without an emoji font shows a box).
  const ICONS = {
    file: ["M14 3H7a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h10a2 2 0 0 0 2-2V8z", "M14 3v5h5"],
    image: ["M5 4h14a2 2 0 0 1 2 2v12a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z", "M21 15l-5-5L5 20"],
    trash: ["M4 7h16", "M10 11v6", "M14 11v6", "M6 7l1 12a2 2 0 0 0 2 2h6a2 2 0 0 0 2-2l1-12", "M9 7V4h6v3"],
    close: ["M6 6l12 12", "M18 6L6 18"],
  };
  function icon(name) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    svg.classList.add("icon-svg");
    for (const d of ICONS[name]) {
      const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
      path.setAttribute("d", d);
      svg.append(path);
    }
    return svg;
  }

  // ---- Markdown replies --------------------------------------------------------------------
  // The design contract: HTML in a reply shows as text and never runs (markdown-it's `html: false`,
  // then DOMPurify's allowlist as a second wall); links are http(s) or mailto only (markdown-it's
  // validateLink, then DOMPurify's ALLOWED_URI_REGEXP) and open in a new tab without an opener or
  // a referrer; code blocks get a copy button. Without the vendored libraries the reply stays text.
  const SAFE_URL = /^(?:https?:\/\/|mailto:)/i;
  const MARKDOWN_TAGS = [
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "s", "code", "pre",
    "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td",
  ];
  // The only classes Markdown makes: a fence's language, a table column's alignment.
  const MARKDOWN_CLASS = /^(?:language-[\w+#.-]{1,40}|align-(?:left|center|right))$/;
  const sources = new WeakMap(); // assistant bubble -> its reply's Markdown so far
  const frames = new Map(); // assistant bubble -> its pending animation frame
  const markdown = makeMarkdown();

  function makeMarkdown() {
    if (typeof window.markdownit !== "function" || !window.DOMPurify || !DOMPurify.isSupported) {
      return null;
    }
    // breaks: a single newline is a line break, as the model meant it in a chat bubble.
    const md = window.markdownit({ html: false, linkify: true, breaks: true, typographer: false });
    md.disable("image"); // the CSP (img-src 'self') refuses other sites' images anyway
    md.linkify.set({ fuzzyLink: false }); // "main.py" is a file, not a link to Paraguay
    md.validateLink = (url) => SAFE_URL.test(url.trim());
    // Table alignment as a class: an inline style attribute would break the CSP (style-src 'self').
    md.core.ruler.push("align_classes", (state) => {
      for (const token of state.tokens) {
        if (token.type !== "th_open" && token.type !== "td_open") continue;
        const align = /^text-align:(left|center|right)$/.exec(token.attrGet("style") || "");
        token.attrs = null;
        if (align) token.attrSet("class", `align-${align[1]}`);
      }
    });
    DOMPurify.addHook("uponSanitizeAttribute", (_node, data) => {
      if (data.attrName === "class" && !MARKDOWN_CLASS.test(data.attrValue)) data.keepAttr = false;
    });
    DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A") {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      }
    });
    return md;
  }

  const PURIFY = {
    ALLOWED_TAGS: MARKDOWN_TAGS,
    ALLOWED_ATTR: ["href", "title", "class", "start"],
    ALLOWED_URI_REGEXP: SAFE_URL,
    RETURN_DOM_FRAGMENT: true,
  };

  // Shows `text` (a whole reply, or all of it streamed so far) as Markdown in `bubble`.
  function renderMarkdown(bubble, text) {
    sources.set(bubble, text);
    if (!markdown) {
      bubble.textContent = text;
      return;
    }
    bubble.classList.add("markdown");
    bubble.replaceChildren(DOMPurify.sanitize(markdown.render(text), PURIFY));
    for (const pre of bubble.querySelectorAll("pre")) addCopyButton(pre);
  }

  function markdownSource(bubble) {
    return sources.get(bubble) || "";
  }

  // Adds a streamed piece: the whole reply so far is rendered again (cheap at chat sizes), at most
  // once per animation frame however many pieces arrive in it.
  function streamMarkdown(bubble, delta) {
    sources.set(bubble, markdownSource(bubble) + delta);
    if (frames.has(bubble)) return;
    frames.set(
      bubble,
      requestAnimationFrame(() => {
        frames.delete(bubble);
        renderMarkdown(bubble, markdownSource(bubble));
        scrollDown();
      }),
    );
  }

  // Renders what streamMarkdown still holds back, now (the reply has ended).
  function flushMarkdown(bubble) {
    if (!frames.has(bubble)) return;
    cancelAnimationFrame(frames.get(bubble));
    frames.delete(bubble);
    renderMarkdown(bubble, markdownSource(bubble));
    scrollDown();
  }

  function addCopyButton(pre) {
    const code = pre.querySelector("code");
    const head = document.createElement("div");
    head.className = "code-head";
    const language = document.createElement("span");
    language.textContent = /(?:^| )language-(\S+)/.exec(code ? code.className : "")?.[1] || "code";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = "Copy";
    button.title = "Copy the code";
    head.append(language, button);
    const block = document.createElement("div");
    block.className = "code-block";
    pre.replaceWith(block);
    block.append(head, pre);
  }

  async function copyCode(button) {
    const pre = button.closest(".code-block")?.querySelector("pre");
    if (!pre) return;
    const text = pre.textContent.replace(/\n$/, ""); // a fence's text ends with its last newline
    try {
      await navigator.clipboard.writeText(text); // only on https or localhost
      button.textContent = "Copied";
    } catch (_) {
      // Plain http on another host has no clipboard API: select the code, so Ctrl+C copies it.
      getSelection().selectAllChildren(pre);
      button.textContent = document.execCommand("copy") ? "Copied" : "Press Ctrl+C";
    }
    setTimeout(() => (button.textContent = "Copy"), 1500); // the label only: nothing waits on it
  }

  log.addEventListener("click", (event) => {
    const button = event.target.closest("button.copy, button.delete");
    if (!button || !log.contains(button)) return;
    if (button.classList.contains("copy")) copyCode(button);
    else deleteMessage(button);
  });

  // ---- Deleting one's own messages --------------------------------------------------------
  // The button (shown on hover or keyboard focus) deletes the message and the bot's reply to it,
  // on the server (they leave the history the model reads) and here.
  function addDeleteButton(bubble) {
    if (!bubble.dataset.messageId || bubble.querySelector("button.delete")) return;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "delete";
    button.setAttribute("aria-label", "Delete this message");
    button.title = "Delete this message and the reply to it";
    button.append(icon("trash"));
    bubble.append(button);
  }

  async function deleteMessage(button) {
    const bubble = button.closest(".message.user");
    if (!bubble || !bubble.dataset.messageId) return;
    button.disabled = true;
    try {
      const response = await fetch(`${base}/messages/${encodeURIComponent(bubble.dataset.messageId)}`, {
        method: "DELETE",
      });
      // 404: the server holds no such message (it was never stored, or is gone already).
      if (!response.ok && response.status !== 404) throw new Error(await errorText(response));
      removeExchange(bubble);
      input.focus(); // the button is gone: keep the keyboard somewhere useful
    } catch (error) {
      button.disabled = false;
      addNotice(`Could not delete the message: ${error.message}`);
    }
  }

  // Removes a user message and the reply bubbles after it (up to the next user message).
  function removeExchange(bubble) {
    const gone = [bubble];
    for (let next = bubble.nextElementSibling; next?.classList.contains("assistant"); next = next.nextElementSibling) {
      gone.push(next);
    }
    for (const element of gone) {
      for (const image of element.querySelectorAll("img.thumb")) URL.revokeObjectURL(image.src);
      element.remove();
    }
    empty.hidden = log.querySelector(".message") !== null;
  }

  function addNotice(text) {
    return addMessage("notice", text);
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (typeof body.error === "string") return body.error;
    } catch (_) {
      // not JSON: fall through
    }
    return `HTTP ${response.status}`;
  }

  // Reads a Server-Sent Events body: calls onEvent(name, data) per event as it arrives.
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) !== -1) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) onEvent(name, JSON.parse(data.join("\n")));
      }
    }
  }

  // The bot's notices after a reply (a file it could not read, an image it cannot see, a message
  // it had to shorten) come last, each a piece of its own: "\n\n(…)". They show apart from the
  // reply, in the muted look of the page's other notices, as text (never Markdown).
  const NOTICE_PIECE = /^\n\n\([^]*\)$/;
  function showNotices(bubble, deltas) {
    const notices = [];
    while (deltas.length > 1 && NOTICE_PIECE.test(deltas[deltas.length - 1])) notices.unshift(deltas.pop());
    if (!notices.length) return;
    renderMarkdown(bubble, deltas.join(""));
    for (const notice of notices) {
      const line = document.createElement("p");
      line.className = "reply-notice";
      line.textContent = notice.trim();
      bubble.append(line);
    }
  }

  // A reply cut short (stopped, a timeout, shutdown) keeps its text; chat.css draws the marker
  // after it from data-cut, the same while streaming and after a reload.
  function markCut(bubble, cut) {
    if (typeof cut === "string" && cut) bubble.dataset.cut = cut;
  }

  // The Stop button, shown while a reply streams: the server stops that reply and keeps what it
  // wrote, and the stream ends as usual. Should the stop request fail, the stream is abandoned
  // here (abort), so the page is never stuck.
  let streamControl = null;
  function showStop(controller) {
    streamControl = controller;
    stop.disabled = false;
    stop.hidden = false;
  }
  function hideStop() {
    streamControl = null;
    stop.hidden = true;
  }
  stop.addEventListener("click", async () => {
    const controller = streamControl;
    if (!controller) return;
    stop.disabled = true;
    try {
      const response = await fetch(`${base}/stop`, { method: "POST" });
      if (!response.ok) throw new Error(await errorText(response));
      // Not stopped: the reply was not being written yet (or just ended); one may click again.
      if (!(await response.json()).stopped && streamControl === controller) stop.disabled = false;
    } catch (_) {
      controller.abort();
    }
  });

  async function loadHistory() {
    try {
      const response = await fetch(`${base}/messages?limit=200`);
      if (!response.ok) throw new Error(await errorText(response));
      const body = await response.json();
      for (const item of body.messages) {
        if (item.role === "user") {
          const bubble = addUserMessage(item.content, attachedFiles(item.attached), item.message_id);
          addDeleteButton(bubble);
        } else {
          markCut(addMessage(item.role, item.content), item.cut);
        }
      }
    } catch (error) {
      addNotice(`Could not load the conversation: ${error.message}`);
    }
  }

  // While the reply waits long in the model's queue, its bubble shows its place in line
  // ("#3 in line", after a spinner chat.css draws); null (it left the queue) empties it for the
  // text to come.
  function showPlace(bubble, position) {
    if (markdownSource(bubble)) return; // the reply's text is showing already
    if (Number.isInteger(position)) {
      bubble.classList.add("queued");
      bubble.textContent = `#${position} in line`;
    } else if (bubble.classList.contains("queued")) {
      bubble.classList.remove("queued");
      bubble.textContent = "";
    }
  }

  // `files`: the composer's chips ({file, thumbnail}), sent as {name, type, data} in base64.
  async function sendText(text, files) {
    // The message id makes a resend after a network error count once, and names it to delete it.
    const messageId = randomId(12);
    const shown = files.map(({ file, thumbnail }) => ({ name: file.name, image: !!thumbnail, thumbnail }));
    const userBubble = addUserMessage(text, shown, messageId);
    const bubble = addMessage("assistant", "", "pending");
    let status = null;
    let cut = null;
    const deltas = [];
    const controller = new AbortController();
    showStop(controller);
    try {
      const attachments = await Promise.all(files.map(({ file }) => encodeFile(file)));
      const response = await fetch(`${base}/messages`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify({ text, message_id: messageId, attachments }),
        signal: controller.signal,
      });
      if (!response.ok) throw new Error(await errorText(response));
      bubble.classList.replace("pending", "streaming");
      await readEvents(response, (name, data) => {
        if (name === "done") {
          status = data.status;
          cut = data.cut;
        } else if (name === "queue") {
          showPlace(bubble, data.position);
        } else if (typeof data.delta === "string") {
          showPlace(bubble, null);
          deltas.push(data.delta);
          streamMarkdown(bubble, data.delta);
          scrollDown();
        }
      });
      if (status === "duplicate" || status === "dropped") bubble.remove();
      else if (status === "failed") bubble.classList.add("error");
      else if (status === null) throw new Error("the reply was cut off");
    } catch (error) {
      const reason = controller.signal.aborted ? "stopped here: the server did not answer the Stop" : error.message;
      bubble.classList.add("error");
      streamMarkdown(bubble, (markdownSource(bubble) ? "\n\n" : "") + `(${reason})`);
    } finally {
      hideStop();
      flushMarkdown(bubble);
      if (status === "answered") showNotices(bubble, deltas);
      bubble.classList.remove("pending", "streaming", "queued");
      bubble.dataset.status = status || "error";
      markCut(bubble, cut);
      // Deletable once its reply is done (a duplicate's stored twin is deletable on its own).
      if (status !== "duplicate") addDeleteButton(userBubble);
    }
  }

  async function command(text) {
    const response = await fetch(`${base}/messages`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    return (await response.json()).reply || "";
  }

  // ---- Files for the next message ---------------------------------------------------------
  // What one message may carry (GET /api/limits); until it answers, the server's defaults.
  const limits = { max_attachments: 4, max_upload_bytes: 25 * 1024 * 1024 };
  const pending = []; // {file, thumbnail}: the chips above the input, in order

  async function loadLimits() {
    try {
      const response = await fetch("/api/limits");
      if (response.ok) Object.assign(limits, await response.json());
    } catch (_) {
      // the defaults stand; the server still checks every message
    }
    attachButton.hidden = limits.max_attachments < 1;
  }

  function formatSize(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(bytes < 10 * 1024 ? 1 : 0)} KB`;
    return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
  }

  // The request body's size with these files: their base64 (4 bytes per 3), names and the text.
  function bodyBytes(files) {
    let total = 1024 + new Blob([input.value]).size * 2; // room for JSON escapes and the fields
    for (const file of files) total += Math.ceil(file.size / 3) * 4 + file.name.length * 2 + 128;
    return total;
  }

  function showAttachStatus(text) {
    attachStatus.textContent = text;
  }

  function addFiles(fileList) {
    const refused = [];
    for (const file of fileList) {
      if (pending.length >= limits.max_attachments) {
        refused.push(`${file.name}: at most ${limits.max_attachments} files per message`);
      } else if (bodyBytes([...pending.map((item) => item.file), file]) > limits.max_upload_bytes) {
        refused.push(`${file.name}: too large (a message's files may take ${formatSize(limits.max_upload_bytes * 0.74)} together)`);
      } else {
        const thumbnail = file.type.startsWith("image/") ? URL.createObjectURL(file) : null;
        pending.push({ file, thumbnail });
      }
    }
    showAttachStatus(refused.length ? `Not attached: ${refused.join("; ")}.` : "");
    renderChips();
  }

  function renderChips() {
    chips.replaceChildren(
      ...pending.map(({ file, thumbnail }, index) => {
        const chip = fileItem({ name: file.name, image: !!thumbnail, thumbnail });
        chip.className = "chip";
        chip.title = `${file.name} (${formatSize(file.size)})`;
        const size = document.createElement("span");
        size.className = "size";
        size.textContent = formatSize(file.size);
        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "remove";
        remove.setAttribute("aria-label", `Remove ${file.name}`);
        remove.title = "Remove";
        remove.append(icon("close"));
        remove.addEventListener("click", () => {
          const [gone] = pending.splice(index, 1);
          if (gone.thumbnail) URL.revokeObjectURL(gone.thumbnail);
          showAttachStatus("");
          renderChips();
          input.focus();
        });
        chip.append(size, remove);
        return chip;
      }),
    );
    chips.hidden = pending.length === 0;
  }

  // A file's bytes as the API takes them: base64 without the data: URL's prefix.
  function encodeFile(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => {
        const url = String(reader.result);
        resolve({ name: file.name, type: file.type || null, data: url.slice(url.indexOf(",") + 1) });
      };
      reader.onerror = () => reject(new Error(`could not read ${file.name}`));
      reader.readAsDataURL(file);
    });
  }

  attachButton.addEventListener("click", () => fileInput.click());
  fileInput.addEventListener("change", () => {
    addFiles(fileInput.files);
    fileInput.value = ""; // picking the same file again fires change again
    input.focus();
  });
  input.addEventListener("paste", (event) => {
    const files = event.clipboardData?.files;
    if (!files?.length || limits.max_attachments < 1) return;
    event.preventDefault();
    addFiles(files);
  });

  // Drag-and-drop anywhere on the page: a hint over the conversation while files hover. The
  // enter/leave pairs of the children are counted so the hint does not flicker.
  let dragDepth = 0;
  function carriesFiles(event) {
    return !!event.dataTransfer && Array.from(event.dataTransfer.types).includes("Files");
  }
  function showDropHint(shown) {
    dropHint.hidden = !shown;
    app.classList.toggle("dropping", shown);
  }
  app.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event) || limits.max_attachments < 1) return;
    event.preventDefault();
    dragDepth += 1;
    showDropHint(true);
  });
  app.addEventListener("dragleave", (event) => {
    if (!carriesFiles(event)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) showDropHint(false);
  });
  // Outside the app too: a file dropped beside it must not make the browser open it instead.
  window.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = app.contains(event.target) && limits.max_attachments > 0 ? "copy" : "none";
  });
  window.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    showDropHint(false);
    if (app.contains(event.target) && limits.max_attachments > 0) {
      addFiles(event.dataTransfer.files);
      input.focus();
    }
  });

  // Busy until the history is on screen, so a new message cannot land above the old ones.
  let busy = true;
  send.disabled = true;
  async function submit() {
    const text = input.value.trim();
    if ((!text && !pending.length) || busy) return;
    busy = true;
    send.disabled = true;
    input.value = "";
    const files = pending.splice(0); // their thumbnails move to the message's bubble
    renderChips();
    showAttachStatus("");
    try {
      await sendText(text, files);
    } finally {
      busy = false;
      send.disabled = false;
      input.focus();
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });

  clear.addEventListener("click", async () => {
    clear.disabled = true;
    try {
      const response = await fetch(`${base}/reset`, { method: "POST" });
      if (!response.ok) throw new Error(await errorText(response));
      for (const image of log.querySelectorAll("img.thumb")) URL.revokeObjectURL(image.src);
      for (const bubble of log.querySelectorAll(".message")) bubble.remove();
      empty.hidden = false;
    } catch (error) {
      addNotice(`Could not clear the conversation: ${error.message}`);
    } finally {
      clear.disabled = false;
    }
  });

  // Advanced options: the page's own channel settings, applied through the /system and
  // /temperature commands (so they take their turn in the channel's order of messages).
  function showTemperature() {
    temperature.disabled = temperatureDefault.checked;
    temperatureValue.textContent = temperatureDefault.checked ? "(default)" : temperature.value;
  }
  function loadOptions() {
    try {
      const saved = JSON.parse(localStorage.getItem(OPTIONS_KEY) || "{}");
      system.value = typeof saved.system === "string" ? saved.system : "";
      if (typeof saved.temperature === "number") {
        temperature.value = String(saved.temperature);
        temperatureDefault.checked = false;
      }
    } catch (_) {
      localStorage.removeItem(OPTIONS_KEY);
    }
    showTemperature();
  }
  temperature.addEventListener("input", showTemperature);
  temperatureDefault.addEventListener("change", showTemperature);
  optionsForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    optionsStatus.textContent = "Applying…";
    const prompt = system.value.trim();
    const temp = temperatureDefault.checked ? null : Number(temperature.value);
    try {
      const replies = [
        await command(prompt ? `/system ${prompt}` : "/system default"),
        await command(temp === null ? "/temperature default" : `/temperature ${temp}`),
      ];
      localStorage.setItem(OPTIONS_KEY, JSON.stringify({ system: prompt, temperature: temp }));
      optionsStatus.textContent = replies.join(" ");
    } catch (error) {
      optionsStatus.textContent = `Not applied: ${error.message}`;
    }
  });

  loadOptions();
  loadLimits();
  loadHistory().finally(() => {
    busy = false;
    send.disabled = false;
    input.focus();
  });
})();

% rebase('admin/base.tpl', title='Broadcast', section='/admin/broadcast')
<h1>Broadcast</h1>
<form method="post" action="/admin/broadcast" enctype="multipart/form-data" class="card form broadcast">
  % include('admin/_csrf.tpl')
  % if error:
  <p class="flash bad" role="alert">⚠️ {{error}} Nothing was sent.</p>
  % elif notice:
  <p class="flash good" role="status">{{notice}}</p>
  % end
  <p class="audience">{{audience_words}}</p>
  <label for="broadcast-text">Message</label>
  <div class="tg-tools" role="toolbar" aria-label="Formatting" aria-controls="broadcast-text" hidden>
    <button type="button" class="secondary small" data-tag="b" title="Bold"><b>B</b></button>
    <button type="button" class="secondary small" data-tag="i" title="Italic"><i>I</i></button>
    <button type="button" class="secondary small" data-tag="u" title="Underline"><u>U</u></button>
    <button type="button" class="secondary small" data-tag="s" title="Strikethrough"><s>S</s></button>
    <button type="button" class="secondary small" data-tag="a" title="Link">Link</button>
    <button type="button" class="secondary small" data-tag="tg-spoiler" title="Spoiler">Spoiler</button>
    <button type="button" class="secondary small" data-tag="code" title="Code">Code</button>
    <button type="button" class="secondary small" data-tag="blockquote" title="Quote">Quote</button>
  </div>
  <textarea id="broadcast-text" name="text" rows="7" required maxlength="20000" aria-describedby="broadcast-format" hx-get="/admin/broadcast/preview" hx-trigger="input changed delay:300ms" hx-target="#preview" hx-include="this, [name=photo_ref]">{{text}}</textarea>
  <details class="tg-format" id="broadcast-format">
    <summary>Formatting: Telegram's HTML tags</summary>
    <ul>
      <li><code>&lt;b&gt;bold&lt;/b&gt;</code>, <code>&lt;i&gt;italic&lt;/i&gt;</code>, <code>&lt;u&gt;underline&lt;/u&gt;</code>, <code>&lt;s&gt;strikethrough&lt;/s&gt;</code>, <code>&lt;tg-spoiler&gt;hidden until tapped&lt;/tg-spoiler&gt;</code></li>
      <li><code>&lt;a href="https://example.com"&gt;a link&lt;/a&gt;</code> (https://, http:// or tg:// addresses); an address typed in the text becomes a link by itself</li>
      <li><code>&lt;code&gt;SALE10&lt;/code&gt;</code>, a block: <code>&lt;pre&gt;…&lt;/pre&gt;</code>; no other tags inside them</li>
      <li><code>&lt;blockquote&gt;a quote&lt;/blockquote&gt;</code> (<code>&lt;blockquote expandable&gt;</code> folds a long one)</li>
      <li>Close every tag, the last opened first: <code>&lt;b&gt;&lt;i&gt;…&lt;/i&gt;&lt;/b&gt;</code>. New lines stay as typed. To show <code>&lt;</code> or <code>&amp;</code> before a letter, write <code>&amp;lt;</code> or <code>&amp;amp;</code>.</li>
      <li>Up to 4096 characters once the tags are gone (1024 under a photo); an emoji counts as 2.</li>
    </ul>
  </details>
  <input type="hidden" name="photo_ref" value="{{photo or ''}}">
  % if photo:
  <div class="tg-photo">
    <img src="/media/{{photo}}" alt="The photo sent with the message" class="thumb">
    <label class="check"><input type="checkbox" name="drop_photo" value="1"> Remove this photo</label>
  </div>
  % end
  <label>{{'Another photo' if photo else 'Photo'}} (optional; the message then becomes its caption, up to 1024 characters) <input type="file" name="photo" accept="image/jpeg,image/png,image/gif,image/webp"></label>
  <div id="preview" class="preview" aria-live="polite">
    % include('admin/_broadcast_preview.tpl')
  </div>
  <div class="tg-buttons">
    % if audience["recipients"]:
    <button type="submit">Review and send…</button>
    % end
    <button type="submit" class="secondary" formaction="/admin/broadcast/test" formnovalidate>Send a test to my chat</button>
  </div>
</form>
% if recent:
<section class="card"><h2>Recent broadcasts</h2>
  <ul>
  % for b in recent:
  <li><a href="/admin/broadcast/{{b['id']}}">{{b["created_at"][:16].replace("T", " ")}}</a> · {{b["recipients"]}} recipients · {{b["plain"][:60]}}</li>
  % end
  </ul>
</section>
% end
<script src="/static/admin/broadcast.js" defer></script>

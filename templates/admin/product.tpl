% rebase('admin/base.tpl', title=product['name'] if product else 'New product', section='/admin/catalog')
<p><a href="/admin/catalog">← Catalog</a></p>
<h1>{{product["name"] if product else "New product"}}</h1>
% if product:
<p class="facts">{{(product["kind"] or "kind not said yet").capitalize()}} · {{fmt(product["price_cents"])}} = {{stars(stars_of(product, rate))}}{{" (its own Stars price)" if product["stars_price"] else " (at the rate)"}} · paid by {{ways_of(product, rule_on)}}</p>
% end
<form method="post" action="/admin/products{{'/%d' % product['id'] if product else ''}}" enctype="multipart/form-data" class="card form">
  % include('admin/_csrf.tpl')
  % if error:
  <p class="flash bad" role="alert">⚠️ {{error}}</p>
  % end
  <label>Name <input name="name" required maxlength="64" value="{{values['name']}}"></label>
  <label>Description <textarea name="description" rows="4" maxlength="800">{{values["description"]}}</textarea></label>
  % if languages:
  % written = sum(1 for t in languages if t["name"] or t["description"])
  <details class="translations" id="translations" {{'open' if languages_open else ''}}>
    <summary>Translations <span class="muted">({{written}} of {{len(languages)}} language{{'s' if len(languages) != 1 else ''}})</span></summary>
    <p class="muted hint">The name and description above are in {{default_language}}, the shop's default language. Shoppers who read one of these languages see the product in it; where its fields are empty, as above.</p>
    % for t in languages:
    <fieldset class="translation">
      <legend>{{t["label"]}}</legend>
      <label>Name in {{t["label"]}} <input name="name.{{t['code']}}" lang="{{t['code']}}" maxlength="64" value="{{t['name']}}"></label>
      <label>Description in {{t["label"]}} <textarea name="description.{{t['code']}}" lang="{{t['code']}}" rows="3" maxlength="800">{{t["description"]}}</textarea></label>
    </fieldset>
    % end
  </details>
  % else:
  <p class="muted hint">Names in other languages: the shop speaks {{default_language}} only; add a language as the README's "Languages" says.</p>
  % end
  <label>Price in EUR <input name="price" required inputmode="decimal" value="{{values['price']}}" placeholder="25.00"></label>
  <fieldset class="choices" id="kind">
    <legend>What it is</legend>
    <label class="check"><input type="radio" name="kind" value="digital" {{'checked' if values['kind'] == 'digital' else ''}} > Digital: a code, key, e-book or download link</label>
    <label class="check"><input type="radio" name="kind" value="physical" {{'checked' if values['kind'] == 'physical' else ''}}> Physical: a parcel, a pickup, goods in hand</label>
    % if product and not product["kind"]:
    <label class="check"><input type="radio" name="kind" value="" {{'checked' if not values['kind'] else ''}}> Not said yet (sold every way it allows, as before)</label>
    % end
    <p class="muted">Telegram requires digital goods to be paid in Telegram Stars inside Telegram (<a href="{{rule_source}}" target="_blank" rel="noopener noreferrer">its rules</a>).{{" This shop follows the rule, so a digital product is offered in Stars only." if rule_on else ""}}</p>
  </fieldset>
  <fieldset class="choices" id="methods">
    <legend>Ways it may be paid (at least one)</legend>
    <input type="hidden" name="methods_listed" value="1">
    % for m in ("stars", "crypto", "balance"):
    <label class="check"><input type="checkbox" name="methods" value="{{m}}" {{'checked' if m in values['methods'] else ''}}> {{method_words[m]}}</label>
    % end
  </fieldset>
  <label>Its own price in Telegram Stars (optional) <input name="stars_price" inputmode="numeric" value="{{values['stars_price']}}" placeholder="from the rate" aria-describedby="stars-hint"></label>
  <p class="muted hint" id="stars-hint">{{stars_hint}} A whole number from 1 to 100000 sets its own.</p>
  <label>Photo (JPEG, PNG, GIF or WebP, up to 10 MB) <input type="file" name="photo" accept="image/jpeg,image/png,image/gif,image/webp"></label>
  % if product and product["photo"]:
  <img class="thumb" src="/media/{{product['photo']}}" alt="Current photo">
  % end
  <label class="check"><input type="checkbox" name="active" value="1" {{'checked' if values['active'] else ''}}> On sale</label>
  <button type="submit">Save</button>
</form>

% if product:
<section class="card">
  <h2>Stock</h2>
  <table class="rows cols3">
    <thead><tr><th>Place</th><th class="num">Available</th><th class="num">Reserved</th><th class="num">Sold</th></tr></thead>
    <tbody>
    % for row in stock:
    <tr><td class="key">{{row["city"]}} / {{row["name"]}}</td><td data-label="Available" class="num">{{row["available"] or 0}}</td><td data-label="Reserved" class="num">{{row["reserved"] or 0}}</td><td data-label="Sold" class="num">{{row["sold"] or 0}}</td></tr>
    % end
    </tbody>
  </table>
  % if stock:
  <form method="post" action="/admin/products/{{product['id']}}/units" enctype="multipart/form-data" class="form">
    % include('admin/_csrf.tpl')
    <label>Add units in <select name="district_id">
      % for row in stock:
      <option value="{{row['id']}}">{{row["city"]}} / {{row["name"]}}</option>
      % end
    </select></label>
    <label>Contents: one unit per line, or blocks separated by a blank line
      <textarea name="units" rows="6" required placeholder="CODE-1234&#10;CODE-5678"></textarea></label>
    <label>Photo delivered with each of these units (optional) <input type="file" name="media" accept="image/jpeg,image/png,image/gif,image/webp"></label>
    <button type="submit">Add units</button>
  </form>
  % else:
  <p class="muted">Add a city and a district first.</p>
  % end
</section>
<section class="card">
  <h2>Units</h2>
  % if units:
  <table class="rows">
    <thead><tr><th>Unit</th><th>Place</th><th>Content</th><th>Status</th><th><span class="visually-hidden">Actions</span></th></tr></thead>
    <tbody>
    % for u in units:
    <tr><td class="key" data-label="Unit">{{u["id"]}}</td><td data-label="Place">{{u["city"]}} / {{u["district"]}}</td><td data-label="Content" class="content wide">{{u["content"]}}{{" 📷" if u["media"] else ""}}</td>
      <td data-label="Status">{{u["status"]}}{{(" · order #%d" % u["order_id"]) if u["order_id"] else ""}}</td>
      <td class="actions">
      % if u["status"] == "available":
        <button type="button" class="small danger" hx-post="/admin/units/{{u['id']}}/delete" hx-confirm="Delete this unit?">Delete<span class="visually-hidden"> unit {{u["id"]}}</span></button>
      % end
      </td></tr>
    % end
    </tbody>
  </table>
  % if more:
  <p><a class="button secondary" href="{{more}}">Older units →</a></p>
  % end
  % else:
  <p class="muted">No units yet.</p>
  % end
</section>
% end

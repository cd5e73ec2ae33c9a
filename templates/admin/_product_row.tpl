% pid = p["id"]
% if not editing:
<tr id="product-{{pid}}" class="product{{'' if p['is_active'] else ' hidden'}}" data-edit-row>
  <td class="key"><span class="named">
    % if p["photo"]:
    <img class="mini" src="/media/{{p['photo']}}" alt="" width="40" height="40" loading="lazy" decoding="async">
    % else:
    <span class="mini none" aria-hidden="true">{{p["name"][:1].upper()}}</span>
    % end
    <a href="/admin/products/{{pid}}">{{p["name"]}}</a></span></td>
  <td data-label="Price" class="num">{{fmt(p["price_cents"])}}</td>
  <td data-label="In Stars" class="num">{{stars(stars_of(p, rate))}}<span class="sub">{{"its own price" if p["stars_price"] else "at the rate"}}</span></td>
  <td data-label="Kind">{{p["kind"] or "not said yet"}}</td>
  <td data-label="Ways to pay" class="wide">{{ways_of(p, rule_on)}}</td>
  <td data-label="In stock" class="wide">
    % if p["available"]:
    <b class="total">{{p["available"]}}</b>
    <ul class="per-place">
      % for s in places:
      <li>{{s["city"]}} / {{s["district"]}} <b>{{s["available"]}}</b></li>
      % end
    </ul>
    % else:
    <span class="none-left">none on sale</span>
    % end
  </td>
  <td data-label="Status" class="aside"><span class="state {{'on' if p['is_active'] else 'off'}}">{{"on sale" if p["is_active"] else "hidden"}}</span></td>
  <td class="actions"><a class="button small secondary edit" href="/admin/products/{{pid}}" hx-get="/admin/products/{{pid}}/edit" hx-target="closest tr" hx-swap="outerHTML"{{!' autofocus' if focus else ''}}>Edit<span class="visually-hidden"> {{p["name"]}}</span></a></td>
</tr>
% else:
<tr id="product-{{pid}}" class="product editing">
  <td colspan="8" class="editor">
  <form class="inline-edit" method="post" action="/admin/products/{{pid}}/row" hx-post="/admin/products/{{pid}}/row" hx-target="closest tr" hx-swap="outerHTML" aria-labelledby="product-{{pid}}-title">
    % include('admin/_csrf.tpl')
    <h3 class="edit-title" id="product-{{pid}}-title">Change {{p["name"]}}</h3>
    % if error:
    <p class="flash bad" role="alert">⚠️ {{error}}</p>
    % end
    <div class="edit-grid">
      <label>Name <input name="name" required maxlength="64" value="{{values['name']}}" autofocus></label>
      <label>Price in EUR <input name="price" required inputmode="decimal" value="{{values['price']}}" placeholder="25.00"></label>
      <label>Own price in Stars (optional) <input name="stars_price" inputmode="numeric" value="{{values['stars_price']}}" aria-describedby="product-{{pid}}-stars"><span class="hint muted" id="product-{{pid}}-stars">{{stars_hint}}</span></label>
      <fieldset class="choices">
        <legend>What it is</legend>
        <label class="check"><input type="radio" name="kind" value="digital" {{'checked' if values['kind'] == 'digital' else ''}}> Digital</label>
        <label class="check"><input type="radio" name="kind" value="physical" {{'checked' if values['kind'] == 'physical' else ''}}> Physical</label>
        % if not p["kind"]:
        <label class="check"><input type="radio" name="kind" value="" {{'checked' if not values['kind'] else ''}}> Not said yet</label>
        % end
      </fieldset>
      <fieldset class="choices">
        <legend>Ways it may be paid</legend>
        <input type="hidden" name="methods_listed" value="1">
        % for m in ("stars", "crypto", "balance"):
        <label class="check"><input type="checkbox" name="methods" value="{{m}}" {{'checked' if m in values['methods'] else ''}}> {{method_words[m]}}</label>
        % end
      </fieldset>
      <fieldset class="choices">
        <legend>Status</legend>
        <label class="check"><input type="checkbox" name="active" value="1" {{'checked' if values['active'] else ''}}> On sale</label>
      </fieldset>
    </div>
    <div class="form-actions">
      <button type="submit">Save</button>
      <a class="button secondary cancel" href="/admin/catalog#product-{{pid}}" hx-get="/admin/products/{{pid}}/row" hx-target="closest tr" hx-swap="outerHTML">Cancel</a>
      <a class="more" href="/admin/products/{{pid}}">Description, photo and units</a>
    </div>
  </form>
  </td>
</tr>
% end
% if oob:
<p id="catalog-status" class="status-line{{' bad' if said.startswith('⚠️') else ''}}" role="status" hx-swap-oob="true">{{said}}</p>
% include('admin/_rule_notice.tpl', oob=True)
% include('admin/_telegram_rule.tpl', oob=True)
% end
